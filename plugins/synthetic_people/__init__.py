"""The renderer behind the ``synthetic`` dataset plugin (``plugins/synthetic.py``): not a plugin itself.

One job per module, each importing only those above it:

- ``draws``: fast random draws from a numpy Generator
- ``body``: LSP joint indices, body proportions, sports-like poses
- ``kinematics``: forward kinematics of a posed skeleton, its projection into the image
- ``shapes``: flat polygons (capsules, ellipses, prism faces)
- ``appearance``: colours, clothing patterns, backgrounds, distractors
- ``figure``: a projected person as body parts ready to paint
- ``render``: painting, occluders, joint visibility and :func:`~.render.render_person`
"""
