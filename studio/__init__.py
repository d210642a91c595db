"""The app's back end, beside ``app.py`` (the page's layout and wiring).

Model side (no Gradio; usable from a notebook):

- :mod:`studio.inputs`: safe image and question input, multi-turn chat inputs, path-free messages;
- :mod:`studio.videos`: video uploads within the app's limits, video chat inputs;
- :mod:`studio.pair`: :func:`~studio.pair.stream_pair`, the interleaved unpruned / V²Drop answer;
- :mod:`studio.schedules`: presets for a model and a schedule's predicted budget;
- :mod:`studio.registry`: :class:`~studio.registry.ModelRegistry`, the one lock-protected model loader.

What matters (no Gradio either): :mod:`studio.ground_truth` (a gallery scene found by its pixels, and
the vision tokens of the objects a question names, on any patch layout), :mod:`studio.marks` (a
visitor's brush or box as a mask over the picture) and :mod:`studio.matters` (the tokens the chart
follows, its data in the session's state, the record in the downloadable trace); the page's editor
for marks is :mod:`studio.editor` (an ImageEditor that decodes only bounded layers).

Hosting (what makes a public server safe): :mod:`studio.hosting` (the operator's launch policy),
:mod:`studio.sessions` (per-session folders, frame cache, clean-up), :mod:`studio.image_cap`.
The page's handlers and views (:mod:`studio.handlers`, :mod:`studio.views`, :mod:`studio.state`) are
the only modules that handle the page. The app's benchmarks drive it through ``gradio_client``:
:mod:`studio.perf` (latency) and :mod:`studio.soak` (memory and disk over many sessions, on a
server started by :mod:`studio.app_process`).
"""
