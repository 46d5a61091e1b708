/* saedex dashboard (part of saedex, same licence): draws a feature's dashboard from the compact
   data of saedex/site/payload.py, on the static site and in a notebook cell. Every string from
   the index is set as text (DOM text nodes, SVG text), never parsed as markup. Data arrives in
   the page or by <script> tags (never fetch), so pages work from file://, under any sub-path
   and with no network. Also the site's search: a sharded term index, one small file per query. */
(function () {
  "use strict";
  const S = (window.saedex = window.saedex || {});
  if (S.ready) return S.mountHere();
  S.ready = true;
  const LEVELS = 9;
  const MARKERS = { " ": "\u2423", "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d" };
  const SVG = "http://www.w3.org/2000/svg";
  const FLAGS = { 1: "fires on", 2: "promotes", 4: "explanation" };

  // -- elements, text only ---------------------------------------------------------------------
  function el(tag, attrs, ...kids) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v != null) node.setAttribute(k, v);
    node.append(...kids.flat(Infinity).filter((k) => k != null && k !== ""));
    return node;
  }
  function sv(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text != null) node.textContent = text;
    return node;
  }
  const num = (v) => (v == null ? "\u2013" : String(Number(v.toPrecision(3))));
  const pct = (d) => num(100 * d) + "%";
  const int = (n) => n.toLocaleString("en-US");
  function tokenNodes(tok) {
    if (!tok) return [el("i", null, "\u2205")];
    return tok.split(/(\s+)/).flatMap((part, k) =>
      !part ? [] : k % 2 ? [el("i", null, [...part].map((c) => MARKERS[c] || "\u00b7").join(""))] : [part]
    );
  }
  const plain = (tok) => (tok ? tok.replace(/\s+/g, (m) => [...m].map((c) => MARKERS[c] || "\u00b7").join("")) : "\u2205");
  const codes = (toks) => (toks.length ? toks.slice(0, 6).flatMap((t, k) => [k ? " \u00b7 " : "", el("code", null, plain(t))]) : ["\u2013"]);

  // -- data loaded by script tags --------------------------------------------------------------
  const loaded = {};
  const vocabs = {};
  const contexts = {};
  const terms = {};
  const wins = {};
  function load(src) {
    if (!loaded[src])
      loaded[src] = new Promise((resolve, reject) => {
        const s = document.createElement("script");
        s.src = src;
        s.onload = resolve;
        s.onerror = () => reject(new Error("cannot load " + src));
        document.head.append(s);
      });
    return loaded[src];
  }
  S.vocab = (model, list) => (vocabs[model] = list);
  S.ctx = (sae, first, rows) => {
    const map = (contexts[sae] = contexts[sae] || {});
    rows.forEach((row, k) => (map[first + k] = row));
  };
  S.terms = (sae, shard, map) => (terms[sae + "/" + shard] = map);
  S.win = (sae, block, map) => (wins[sae + "/" + block] = map);

  // -- the dashboard ---------------------------------------------------------------------------
  function table(headers, rows, css) {
    return el("div", { class: "sx-table " + css },
      el("table", null, el("thead", null, el("tr", null, headers.map((h) => el("th", null, h)))),
        el("tbody", null, (rows.length ? rows : [["\u2013", ""]]).map((r) => el("tr", null, r.map((c) => el("td", null, c)))))));
  }
  const level = (v, scale) => (scale <= 0 ? LEVELS : Math.min(LEVELS, Math.max(1, Math.ceil((LEVELS * v) / scale))));

  function tokens(ex, ctx, ctxt, a, b) {
    const [, maxPos, , pos, vals] = ex;
    const acts = new Map(pos.map((p, k) => [p, vals[k]]));
    const out = [];
    for (let p = a; p < b; p++) {
      const text = tokenNodes(ctxt.tok(ctx[3][p]));
      const v = acts.get(p);
      if (v > 0) out.push(el("mark", { class: "a" + level(v, ctxt.scale) + (p === maxPos ? " mx" : ""), "data-v": num(v) }, text));
      else out.push(...text);
    }
    return out;
  }
  // -- a top example widened across its document's contexts (payload.window_entry) ------------
  async function documentWindow(f, k, ctxt) {
    const page = ctxt.page, block = Math.floor(f.i / page.per_page);
    await load(`${ctxt.state.data}${page.sae}/win-${block}.js`);
    const entry = ((wins[page.sae + "/" + block] || {})[f.i] || [])[k];
    if (!entry) throw new Error("no document window for example " + k);
    await ctxt.need(entry[3].map((seg) => seg[0]));
    return entry;
  }
  function windowView(ex, entry, ctxt) {
    const [start, indexed, total, segs] = entry;
    const width = segs.reduce((n, [, a, b]) => n + b - a, 0);
    const c = el("span", { class: "sx-c" });
    if (start > 0) c.append(el("b", { class: "sx-dots" }, "\u2026"));
    segs.forEach(([ref, a, b, pos, vals], j) => {
      const own = pos === undefined;
      if (j) c.append(el("span", { class: "sx-cb", title: "a new context: stored activations restart here" }));
      c.append(...tokens(own ? ex : [ref, -1, 0, pos, vals], ctxt.context(ref), ctxt, a, b));
    });
    if (start + width < indexed) c.append(el("b", { class: "sx-dots" }, "\u2026"));
    let note = `document tokens ${int(start)}\u2013${int(start + width - 1)} of ${int(indexed)}`;
    if (indexed < total) note += ` indexed (the document has ${int(total)})`;
    note += ` \u00b7 ${segs.length} context${segs.length > 1 ? "s" : ""}, a bar marks where one starts (attention and the stored activations restart there)`;
    return el("div", { class: "sx-doc" }, c, el("div", { class: "sx-src" }, note));
  }
  function widen(f, k, ex, ctxt) {
    const button = el("button", { class: "sx-more", type: "button" }, `\u00b1${ctxt.page.doc_window} tokens of the document`);
    button.addEventListener("click", () => {
      button.disabled = true;
      const show = (view) => { button.parentNode.after(view); button.remove(); };
      documentWindow(f, k, ctxt).then((entry) => show(windowView(ex, entry, ctxt)),
        (e) => { show(el("p", { class: "sx-src" }, "The document window could not be loaded.")); console.error(e); });
    });
    return button;
  }

  function example(ex, ctxt, f, k) {
    const [ref, maxPos, maxAct] = ex;
    const ctx = ctxt.context(ref);
    const [cid, doc, src, ids] = ctx;
    const first = ctxt.page.first, w = ctxt.page.window;
    const lo = Math.max(first, maxPos - w), hi = Math.min(ids.length, maxPos + w + 1);
    const c = el("span", { class: "sx-c" });
    if (lo > first) c.append(el("span", { class: "o" }, tokens(ex, ctx, ctxt, first, lo)), el("b", { class: "x" }, "\u2026"));
    c.append(...tokens(ex, ctx, ctxt, lo, hi));
    if (hi < ids.length) c.append(el("b", { class: "x" }, "\u2026"), el("span", { class: "o" }, tokens(ex, ctx, ctxt, hi, ids.length)));
    let where = "doc " + doc;
    if (src && src !== doc) where += " \u00b7 source " + src;
    return el("details", { class: "sx-ex" }, el("summary", null, el("span", { class: "sx-v" }, num(maxAct)), c),
      el("div", { class: "sx-src" }, `${where} \u00b7 context ${cid} \u00b7 max at token ${maxPos} `,
        f && ctxt.page.doc_window > 0 ? widen(f, k, ex, ctxt) : null));
  }
  // `f` for top examples: those can widen to their document window
  function examples(list, ctxt, none, f) {
    if (!list.length) return el("p", { class: "sx-none" }, none);
    return el("div", { class: "sx-exs" }, list.map((ex, k) => example(ex, ctxt, f, k)));
  }

  function bars(edges, counts, title, cls, tick, note, ticks) {
    const W = 360, H = 150, L = 8, B = 30, T = 18;
    const svg = sv("svg", { class: "sx-hist", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
    svg.append(sv("title", null, title), sv("text", { class: "t", x: L, y: 12 }, title));
    const peak = counts.length ? Math.max(...counts) : 0;
    if (peak <= 0) return svg.append(sv("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no data")), svg;
    const pw = W - 2 * L, ph = H - B - T, step = pw / counts.length, base = T + ph;
    counts.forEach((n, i) => {
      if (n <= 0) return;
      const h = Math.max(1, (ph * n) / peak);
      const r = sv("rect", { class: cls(edges[i], edges[i + 1]), x: (L + i * step).toFixed(1), y: (base - h).toFixed(1), width: Math.max(step - 1, 1).toFixed(1), height: h.toFixed(1) });
      r.append(sv("title", null, `${tick(edges[i])} to ${tick(edges[i + 1])}: ${int(n)}`));
      svg.append(r);
    });
    svg.append(sv("line", { x1: L, y1: base, x2: W - L, y2: base }));
    const lo = edges[0], span = edges[edges.length - 1] - lo || 1;
    for (const v of ticks || [lo, edges[edges.length - 1]]) {
      const x = L + (pw * (v - lo)) / span;
      const anchor = x <= L + 1 ? "start" : x >= W - L - 1 ? "end" : "middle";
      svg.append(sv("line", { x1: x.toFixed(1), y1: base, x2: x.toFixed(1), y2: base + 3 }),
        sv("text", { x: x.toFixed(1), y: base + 14, "text-anchor": anchor }, tick(v)));
    }
    svg.append(sv("text", { x: W / 2, y: base + 26, "text-anchor": "middle" }, note),
      sv("text", { x: W - L, y: 12, "text-anchor": "end" }, "max " + int(peak)));
    return svg;
  }
  S.bars = bars;
  S.render = (section, f, state) => render(section, f, state);

  function featureHref(ctxt, sae, i) {
    const page = ctxt.page;
    if (!page.sae) return null; // a notebook: no pages to link to
    const file = Math.floor(i / page.per_page) + ".html#f" + i;
    return sae === page.sae ? file : `../../${sae}/features/${file}`;
  }
  function link(ctxt, sae, i, text) {
    const href = featureHref(ctxt, sae, i);
    return href ? el("a", { href }, text) : text;
  }

  function nav(f, ctxt) {
    const page = ctxt.page;
    if (!page.sae) return null;
    const listing = Math.floor(f.i / page.list_per_page) + 1;
    const parts = [el("a", { href: `../list/index-${listing}.html#f${f.i}` }, "\u2191 All features")];
    if (f.i > 0) parts.push(" \u00b7 ", link(ctxt, page.sae, f.i - 1, "\u2039 #" + (f.i - 1)));
    if (f.i + 1 < page.d_sae) parts.push(" \u00b7 ", link(ctxt, page.sae, f.i + 1, "#" + (f.i + 1) + " \u203a"));
    return el("p", { class: "sx-nav" }, parts);
  }

  function dashboard(f, ctxt) {
    const page = ctxt.page;
    const fires = [...new Set(f.ex.map(([ref, p]) => ctxt.context(ref)[3][p]))].map(ctxt.tok);
    const shown = f.ex.slice(0, page.shown);
    const sign = (a, b) => (a + b < 0 ? "neg" : "pos");
    const out = [
      el("h1", null, "Feature " + f.i, page.sae ? el("small", null, " " + page.title) : null),
      f.xp.length ? el("div", { class: "sx-xp" }, f.xp.map((x) => el("p", null, el("strong", null, x[0]),
        el("span", { class: "sx-note" }, " \u2014 " + [x[1], x[2], x[3]].filter(Boolean).join(", ") +
          Object.entries(x[4] || {}).map(([k, v]) => ` \u00b7 ${k} ${num(v)}`).join(""))))) : null,
      el("div", { class: "sx-lead" }, el("p", null, el("strong", null, "Fires most on "), codes(fires)),
        el("p", null, el("strong", null, "Promotes "), codes(f.tl.map(([t]) => ctxt.tok(t))))),
      nav(f, ctxt),
      el("div", { class: "sx-row" },
        table(["Statistic", "Value"], [["Density", pct(f.d)], ["Active tokens", int(f.n) + (page.n_tokens ? " of " + int(page.n_tokens) : "")],
          ["Max activation", num(f.mx)], ["Mean (when active)", num(f.mu)], ["Skew", num(f.sk)], ["Kurtosis", num(f.ku)]], "sx-stats"),
        bars(f.h[0], f.h[1], "Activations (non-zero)", () => "b", num, "activation"),
        bars(f.lh[0], f.lh[1], "Logit lens (all tokens)", sign, num, "logit")),
      el("div", { class: "sx-row" },
        table(["Promoted tokens", "Logit"], f.tl.map(([t, v]) => [el("code", null, tokenNodes(ctxt.tok(t))), (v >= 0 ? "+" : "") + v.toFixed(3)]), "sx-logits"),
        table(["Suppressed tokens", "Logit"], f.bl.map(([t, v]) => [el("code", null, tokenNodes(ctxt.tok(t))), (v >= 0 ? "+" : "") + v.toFixed(3)]), "sx-logits"),
        table(["Neighbour", "Cosine"], f.nb.map(([i, c]) => [link(ctxt, page.sae, i, "#" + i), c.toFixed(3)]), "sx-nbrs"),
        table(["Co-activating", "Jaccard", "Lift"], (f.ca || []).map(([i, j, l, n]) =>
          [link(ctxt, page.sae, i, "#" + i), el("span", { title: int(n) + " tokens together" }, j.toFixed(3)), num(l)]), "sx-nbrs sx-coact"),
        f.mt.length ? table(["In other SAEs", "Relation", "Score"], f.mt.map(([sae, i, rel, score]) =>
          [link(ctxt, sae, i, `${sae} #${i}`), rel, num(score)]), "sx-matches") : null),
      el("h2", { id: "top" }, "Top activations"),
      el("p", { class: "sx-note" }, `The ${shown.length} contexts where the feature peaks highest. Each shows ${page.window} tokens ` +
        `either side of its max token; click one to see its whole context` +
        (page.doc_window > 0 ? ` and, from there, ${page.doc_window} tokens either side in its document, across context boundaries` : "") + `. Shading is relative to the feature's max activation (${num(f.mx)}); hover a token for its value.`),
      examples(shown, ctxt, "No examples: the feature never fired on the corpus.", f),
      el("h2", { id: "intervals" }, "Activation intervals"),
      el("p", { class: "sx-note" }, "Random samples from equal-width intervals of [0, max activation], highest first (as SAEDashboard); " +
        "CONTAINS is the share of the feature's non-zero activations in the interval."),
      f.iv.length ? f.iv.map(([lo, hi, frac, exs]) => [el("h3", { class: "sx-int" }, `INTERVAL ${num(lo)} - ${num(hi)} CONTAINS ${num(100 * frac)}%`),
        examples(exs, ctxt, "No activations in this interval.")]) : el("p", { class: "sx-none" }, "No intervals."),
    ];
    return out;
  }

  // -- mounting: a notebook cell holds its data; a site page loads vocab and contexts -----------
  async function render(section, f, state) {
    const page = state.page;
    const refs = [...f.ex, ...f.iv.flatMap((iv) => iv[3])].map((ex) => ex[0]);
    let context, tok, need;
    if (state.contexts) {
      context = (ref) => state.contexts[ref];
      tok = (id) => state.vocab[id];
      need = async () => null;
    } else {
      need = (list) => Promise.all([...new Set(list.map((r) => Math.floor(r / state.ctx_shard)))]
        .map((k) => load(`${state.data}${page.sae}/ctx-${k}.js`)));
      await Promise.all([load(`${state.data}vocab-${state.model}.js`), need(refs)]);
      const vocab = vocabs[state.model];
      context = (ref) => contexts[page.sae][ref];
      tok = (id) => vocab[id];
    }
    const ctxt = { page, state, context, tok, need, scale: f.mx };
    section.replaceChildren(...dashboard(f, ctxt).flat(Infinity).filter(Boolean));
    section.classList.add("sx-drawn");
  }

  function showFromHash(root, state) {
    const byIndex = new Map(state.features.map((f) => [f.i, f]));
    const show = () => {
      const m = /^#f(\d+)$/.exec(location.hash);
      const f = byIndex.get(m ? +m[1] : state.features[0].i);
      if (!f) return;
      const section = document.getElementById("f" + f.i);
      document.title = `Feature ${f.i} \u00b7 ${state.page.title}`;
      if (!section.classList.contains("sx-drawn")) render(section, f, state).catch((e) => console.error(e));
    };
    window.addEventListener("hashchange", show);
    show();
  }

  S.mountHere = function () {
    const script = document.currentScript;
    const cell = script && script.closest(".sx-cell");
    if (cell) {
      const state = JSON.parse(cell.querySelector('script[type="application/json"]').textContent);
      render(cell.querySelector(".sx-f"), state.features[0], state).catch((e) => console.error(e));
    }
  };

  // -- search ----------------------------------------------------------------------------------
  function fnv(text) {
    let h = 0x811c9dc5;
    for (const b of new TextEncoder().encode(text)) h = Math.imul(h ^ b, 0x01000193) >>> 0;
    return h >>> 0;
  }
  const words = (q) => q.toLowerCase().match(/[\p{L}\p{N}]+/gu) || [];

  async function search(query, form) {
    const cfg = JSON.parse(form.dataset.search);
    const found = [];
    const n = /^\s*#?(\d+)\s*$/.exec(query);
    for (const sae of cfg.saes) {
      const href = (i) => `${cfg.root}${sae.key}/features/${Math.floor(i / cfg.per_page)}.html#f${i}`;
      if (n && +n[1] < sae.d_sae) found.push({ sae, i: +n[1], why: "index", score: 1e9, href: href(+n[1]) });
      const keys = [...new Set([query.trim().toLowerCase(), ...words(query)])].filter(Boolean);
      const score = new Map();
      await Promise.all(keys.map(async (key) => {
        const shard = fnv(key) % sae.shards;
        await load(`${cfg.root}${cfg.data}${sae.key}/terms-${shard}.js`).catch(() => null);
        for (const [i, flags] of (terms[sae.key + "/" + shard] || {})[key] || []) {
          const s = score.get(i) || { keys: 0, flags: 0 };
          s.keys += 1;
          s.flags |= flags;
          score.set(i, s);
        }
      }));
      for (const [i, s] of score) {
        const why = Object.entries(FLAGS).filter(([b]) => s.flags & b).map(([, w]) => w).join(", ");
        found.push({ sae, i, why, score: s.keys * 16 + (s.flags & 8 ? 6 : 0) + (s.flags & 4 ? 3 : 0) + (s.flags & 1 ? 2 : 0) + (s.flags & 2 ? 1 : 0), href: href(i) });
      }
    }
    return found.sort((a, b) => b.score - a.score || a.i - b.i).slice(0, 50);
  }

  function mountSearch(form) {
    const input = form.querySelector("input");
    const list = form.querySelector(".sx-results");
    let pending = 0;
    const run = async () => {
      const ticket = ++pending;
      const q = input.value;
      if (!q.trim()) return list.replaceChildren();
      const found = await search(q, form);
      if (ticket !== pending) return;
      list.dataset.q = q;
      const many = JSON.parse(form.dataset.search).saes.length > 1;
      list.replaceChildren(...(found.length ? found.map((r) => el("li", null, el("a", { href: r.href }, (many ? r.sae.title + " " : "") + "#" + r.i), el("span", { class: "sx-note" }, " " + r.why)))
        : [el("li", { class: "sx-none" }, "No feature found (search matches whole tokens and words).")]));
    };
    input.addEventListener("input", () => setTimeout(run, 150));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      run().then(() => { const a = list.querySelector("a"); if (a) a.click(); });
    });
  }

  function boot() {
    document.querySelectorAll("form.sx-search").forEach(mountSearch);
    const data = document.getElementById("sx-data");
    if (data) showFromHash(document, JSON.parse(data.textContent));
  }
  S.mountHere();
  if (!document.currentScript || !document.currentScript.closest(".sx-cell")) {
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
    else boot();
  }
})();
