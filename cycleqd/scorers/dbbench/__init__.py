"""DBBench: SQL questions answered by the model, executed in the sandbox.

Modules:
    questions: the data files: the questions, their databases and their gold, read and checked.
    conversation: the prompts, the parsing of replies and how answers compare.
    scorer: the scorer (gold results, sandbox runs, single- and multi-turn episodes).
    _runner: the program that runs inside the sandbox (read as text, never imported).
"""
