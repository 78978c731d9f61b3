"""Tasks: what a network is trained to do on a sample, and how it is scored.

:mod:`~sslbench.tasks.pose` is the pose task (heatmap codec, loss, decoding),
:mod:`~sslbench.tasks.metrics` PCK, :mod:`~sslbench.tasks.oks` OKS AP through pycocotools;
:mod:`~sslbench.tasks.pretexts`, :mod:`~sslbench.tasks.jigsaw` and :mod:`~sslbench.tasks.embedding`
are the kits pretext plugins are built from, :mod:`~sslbench.tasks.semi` the semi-supervised kit.
"""
