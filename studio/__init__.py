"""The app's model-side logic: safe inputs, the interleaved unpruned / V²Drop chat loop, the model registry,
and the app latency benchmark. Imports the ``v2drop`` library; knows nothing of Gradio."""
