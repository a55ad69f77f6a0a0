"""OS interaction: multi-turn shell episodes in the sandbox.

Modules:
    tasks: the task files, read and checked.
    episode: the prompts, the actions of a reply and the bash scripts that replay an episode.
    scorer: the scorer (plays the episodes in the sandbox and judges them).
"""
