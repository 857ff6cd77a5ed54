"""An example Compression Studio plugin: the pass `example.round` and the evaluator `top2`."""
