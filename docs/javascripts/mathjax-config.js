// MathJax 3 (vendored in javascripts/mathjax/, no network) renders the \( \) and \[ \] spans that
// pymdownx.arithmatex writes; Material's instant navigation is off, so one typeset per page load.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex"
  }
};
