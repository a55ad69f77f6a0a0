"""Generation: the backends real-task scorers decode with, and batched greedy decoding.

Modules: backends (transformers and vLLM backends, chat rendering, the BACKENDS registry),
decode (batched greedy decoding and the byte-level tokenizer of the embedded models).
"""
