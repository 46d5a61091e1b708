"""saedex.site: an index exported as a static MkDocs Material site (`saedex export-site`).

export.py writes the project (in parallel, only what changed), pages.py composes the documents,
render.py and svg.py the escaped HTML and the histograms, hooks.py is the MkDocs hook that puts
pre-rendered HTML in place, build.py runs MkDocs (sharded across processes).
"""
