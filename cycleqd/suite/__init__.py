"""The embedded suite: the stage the default run evolves on, built on the engine.

Nothing in the engine, the weights, evaluation, the sandbox or the scorers imports this package;
the registries name its sources and scorers as strings, imported on use.

Modules:
    skills: the code, SQL and shell requests and their execution-checked scorer (a package).
    tinylm: the tiny Llama base and experts, trained on CPU and cached (a package).
    digits: the digits demo (a small CNN per digit group).
    language: language retention (the paper's retention metric on held-out text).
"""
