"""Data: image files and their joints, splits, loaders, and the geometry of a sample.

:mod:`~sslbench.data.imageio` reads images (and a labelled dataset's files),
:mod:`~sslbench.data.splits` draws budgets and validation sets, :mod:`~sslbench.data.loaders`
turns a dataset and a task into batches, :mod:`~sslbench.data.pipeline` holds the affine sample
geometry, :mod:`~sslbench.data.joints` the LSP joint constants, :mod:`~sslbench.data.instances`
people cropped from shared images, :mod:`~sslbench.data.verify` and
:mod:`~sslbench.data.download` check and fetch datasets.
"""
