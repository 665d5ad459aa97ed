"""The agent: reconciles each router's kernel state with its desired state."""

from cthm.agent.agent import Agent
from cthm.agent.capabilities import HelperCapabilities
from cthm.agent.kernel_state import KernelStateBook
from cthm.agent.namespace_check import check_namespace
from cthm.agent.ports import (
    BindingReport,
    DesiredRouter,
    DesiredStateSource,
    InvalidDesiredState,
    KernelBackend,
    KernelState,
    RouterReport,
)
from cthm.agent.queue import ShutDown, WorkQueue
from cthm.agent.reconciler import Action, Reconciler, ReconcileResult
from cthm.agent.source import LocalStoreSource

__all__ = [
    "Action",
    "Agent",
    "BindingReport",
    "DesiredRouter",
    "DesiredStateSource",
    "HelperCapabilities",
    "InvalidDesiredState",
    "KernelBackend",
    "KernelState",
    "KernelStateBook",
    "LocalStoreSource",
    "ReconcileResult",
    "Reconciler",
    "RouterReport",
    "ShutDown",
    "WorkQueue",
    "check_namespace",
]
