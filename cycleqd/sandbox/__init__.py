"""The sandbox: model-written code, SQL and shell commands run only in here.

Public names: Sandbox, Limits, SandboxResult, SandboxUnavailable, shared_sandbox.
Modules: box (the pool of bubblewrap workers), _worker (the worker program, a real file that
runs inside the sandbox).
"""

from cycleqd.sandbox.box import Limits, Sandbox, SandboxResult, SandboxUnavailable, shared_sandbox

__all__ = ["Limits", "Sandbox", "SandboxResult", "SandboxUnavailable", "shared_sandbox"]
