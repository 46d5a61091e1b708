"""saedex.site: indexed SAEs exported as one static MkDocs Material site (`saedex export-site`).

export.py writes the project (in parallel, only what changed); payload.py turns a feature into
the compact data that assets/dashboard.js, the one renderer, draws (site and notebook alike);
render.py holds the escaping and the no-script fallback; pages.py composes the documents; svg.py
draws the home page's density plot; hooks.py is the MkDocs hook (pre-rendered HTML, feature
blocks stamped into the theme); build.py runs MkDocs.
"""
