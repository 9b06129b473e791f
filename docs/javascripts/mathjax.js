// MathJax 3 for the site: pymdownx.arithmatex writes \( \) and \[ \] on the Markdown pages; the
// tutorials' Markdown cells keep $ $ and $$ $$. Code and cell outputs are never typeset.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    skipHtmlTags: ["script", "noscript", "style", "textarea", "pre", "code"],
  },
};

// Material for MkDocs emits document$ on every page load (also with instant navigation)
document$.subscribe(() => {
  if (window.MathJax.typesetPromise) {
    MathJax.startup.output.clearCache();
    MathJax.typesetClear();
    MathJax.texReset();
    MathJax.typesetPromise();
  }
});
