"""OS interaction: multi-turn shell episodes in the sandbox.

Modules: scorer (the scorer, its tasks and episodes).
"""
