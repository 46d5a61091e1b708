/* saedex: a Worker stand-in for pages opened from file://, where browsers refuse real workers.
   It runs the worker script (the theme's search) in a hidden same-origin iframe, so search
   works offline with no network (what the theme's offline plugin fetches iframe-worker for). */
(function () {
  "use strict";
  if (location.protocol !== "file:") return;
  class FileWorker extends EventTarget {
    constructor(url) {
      super();
      this.pending = [];
      this.frame = document.createElement("iframe");
      this.frame.hidden = true;
      document.body.appendChild(this.frame);
      const scope = this.frame.contentWindow;
      scope.postMessage = (data) =>
        this.dispatchEvent(new MessageEvent("message", { data: data }));
      const script = scope.document.createElement("script");
      script.onload = () => {
        this.ready = true;
        this.pending.splice(0).forEach((data) => this.postMessage(data));
      };
      script.onerror = () => this.dispatchEvent(new Event("error"));
      script.src = new URL(url, location.href).href;
      scope.document.body.appendChild(script);
    }
    postMessage(data) {
      if (!this.ready) return void this.pending.push(data);
      const scope = this.frame.contentWindow;
      scope.dispatchEvent(new scope.MessageEvent("message", { data: data }));
    }
    terminate() {
      this.frame.remove();
    }
  }
  window.Worker = FileWorker;
})();
