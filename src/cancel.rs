//! Stopping on a signal: the first SIGINT or SIGTERM asks envctl to stop (no new step starts, the
//! steps in flight finish or roll back, and every wait ends at once: a wait is not a step, and
//! what it waits for carries on without envctl), a second one stops at once. [`Cancel`] is the
//! shared flag; whoever waits (a lock, a prompt, a poll for a cloud resource) also wakes up when
//! it is set. Signals are the process's: [`Cancel::process`] is the flag they set, which the
//! command and its provider share.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use tokio::sync::Notify;

/// Set to an exit code (130 for SIGINT, 143 for SIGTERM) when a signal asks envctl to stop.
#[derive(Clone, Debug, Default)]
pub struct Cancel {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    code: AtomicI32,
    signals: AtomicU32,
    notify: Notify,
}

impl Cancel {
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// The process's flag: the one a signal sets, shared by the command and whatever it opened
    /// (the provider's waits end on it).
    pub fn process() -> Cancel {
        static PROCESS: std::sync::OnceLock<Cancel> = std::sync::OnceLock::new();
        PROCESS.get_or_init(Cancel::new).clone()
    }

    /// The exit code a signal asked for, if one arrived.
    pub fn requested(&self) -> Option<i32> {
        match self.inner.code.load(Ordering::SeqCst) {
            0 => None,
            code => Some(code),
        }
    }

    pub fn is_requested(&self) -> bool {
        self.requested().is_some()
    }

    /// Records a signal; returns how many have arrived.
    pub fn signal(&self, code: i32) -> u32 {
        let _ = self
            .inner
            .code
            .compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst);
        let count = self.inner.signals.fetch_add(1, Ordering::SeqCst) + 1;
        self.inner.notify.notify_waiters();
        count
    }

    /// Resolves once a signal has asked envctl to stop, with its exit code.
    pub async fn requested_wait(&self) -> i32 {
        loop {
            let notified = self.inner.notify.notified();
            if let Some(code) = self.requested() {
                return code;
            }
            notified.await;
        }
    }

    /// `work`'s output, or `None` when a signal arrives while it runs: for a wait (a server
    /// that takes the connection and never answers), which ends at the signal. A signal that
    /// came before it began does not end it: what runs after the first signal is a step in
    /// flight finishing (its ledger tags written), which a second signal stops.
    pub async fn or_signal<F: std::future::Future>(&self, work: F) -> Option<F::Output> {
        let seen = self.inner.signals.load(Ordering::SeqCst);
        let next = async {
            loop {
                let notified = self.inner.notify.notified();
                if self.inner.signals.load(Ordering::SeqCst) > seen {
                    return;
                }
                notified.await;
            }
        };
        tokio::select! {
            out = work => Some(out),
            () = next => None,
        }
    }

    /// Resolves once a second signal asks envctl to stop at once.
    pub async fn forced(&self) -> i32 {
        loop {
            let notified = self.inner.notify.notified();
            if self.inner.signals.load(Ordering::SeqCst) >= 2 {
                return self.requested().unwrap_or(130);
            }
            notified.await;
        }
    }
}
