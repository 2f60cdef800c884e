"""``npconv serve``: a local web page to draw a digit and watch every layer answer, browse runs and mistakes.

- :mod:`npconv.serve.catalog` -- what is served: runs, model files and folders of runs, by id; every file
  read is checked to lie inside the served folders;
- :mod:`npconv.serve.network` -- one image through a model, layer by layer: probabilities and activations,
  the architecture, the first layer's filters;
- :mod:`npconv.serve.mistakes` -- a model's answers on its test set: the confusion matrix and its cells;
- :mod:`npconv.serve.report` -- a study's REPORT.md as safe HTML;
- :mod:`npconv.serve.app` -- the Starlette application: the page and the JSON API;
- ``static/`` -- the page itself: plain HTML, CSS and JavaScript modules, no build step, nothing from the network.

The web stack (Starlette, uvicorn, markdown-it-py) is the optional extra ``npconv[serve]``; only
:mod:`~npconv.serve.app` and :mod:`~npconv.serve.report` import it.
"""
