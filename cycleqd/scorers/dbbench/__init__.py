"""DBBench: SQL questions answered by the model, executed in the sandbox.

Modules: scorer (the scorer and its data), _runner (the program that runs inside the sandbox).
"""
