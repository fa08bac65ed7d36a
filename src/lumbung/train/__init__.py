"""DiLoCo training across providers (Douillard et al. 2023, arXiv 2311.08105).

Torch-free modules (the hub imports only these): ``spec`` (the job's ``train`` section), ``outer``
(the outer Nesterov step), ``codec`` (pseudo-gradient compression), ``rounds`` (the hub's state
between rounds) and ``data`` (the Shakespeare corpus as numpy arrays). Torch modules (workers and
simulations only): ``model``, ``inner``, ``simulate``. Importing this package imports neither.
"""
