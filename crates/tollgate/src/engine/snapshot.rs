//! [`Snapshot`]: configuration that requests read and only configuration changes write.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

/// An immutable value swapped whole when configuration changes it (the per-key overrides,
/// what the central layer leaves to per-route layers), which a request does not load until
/// it was ever changed: until then it is its default, and loading it costs a request more
/// than what it does with the default.
#[derive(Debug, Default)]
pub(crate) struct Snapshot<T> {
    current: ArcSwap<T>,
    /// Whether [`Snapshot::change`] ever ran; set after its swap.
    changed: AtomicBool,
}

impl<T> Snapshot<T> {
    /// The current value (for configuration changes and what reads them).
    pub(crate) fn load(&self) -> Guard<Arc<T>> {
        self.current.load()
    }

    /// The current value for a request: `None` (the default) until it was ever changed. A
    /// request that finds it changed finds the change.
    #[inline]
    pub(crate) fn if_changed(&self) -> Option<Guard<Arc<T>>> {
        self.changed
            .load(Ordering::Acquire)
            .then(|| self.current.load())
    }

    /// Replaces the value with what `change` makes of the current one ([`ArcSwap::rcu`]);
    /// from then on requests load it.
    pub(crate) fn change(&self, change: impl FnMut(&Arc<T>) -> T) {
        self.current.rcu(change);
        self.changed.store(true, Ordering::Release);
    }
}
