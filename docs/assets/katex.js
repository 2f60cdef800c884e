// Render the math that pymdownx.arithmatex wrapped (\( \) inline, \[ \] display) with the vendored KaTeX.
function renderMath() {
  document.querySelectorAll(".arithmatex").forEach((element) => {
    renderMathInElement(element, {
      delimiters: [
        {left: "\\(", right: "\\)", display: false},
        {left: "\\[", right: "\\]", display: true},
      ],
      throwOnError: false,
    });
  });
}
if (typeof document$ !== "undefined") {
  document$.subscribe(renderMath);  // Material's instant navigation
} else {
  document.addEventListener("DOMContentLoaded", renderMath);
}
