//! The open INVITE transactions: the table by our branch, one timer heap
//! for all of them, and the one place where a transaction machine's
//! [`Action`]s meet the sockets and the clock.

use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::transport::{Network, Peer};
use super::txn::{Action, InviteTxn, T1, Timer};
use crate::state::SubjectKind;

/// What a 607 to a screened call teaches (RFC 8197 feedback).
#[derive(Debug)]
pub struct CallNumbers {
    pub orig: String,
    pub dest: String,
    /// What the report counts against (none: the caller was not verified).
    pub report: Option<(SubjectKind, String)>,
}

/// One INVITE: what identifies it and its machine.
#[derive(Debug)]
pub struct Txn {
    /// Our branch toward downstream (also the table key).
    pub branch: Arc<str>,
    pub upstream: Peer,
    /// The INVITE as received.
    pub invite: Arc<[u8]>,
    /// When it arrived.
    pub started: Instant,
    pub to_tag: String,
    machine: Mutex<InviteTxn>,
    /// Woken when a CANCEL stops the screening.
    pub cancelled: Notify,
    pub numbers: OnceLock<CallNumbers>,
}

impl Txn {
    /// A transaction for an INVITE about to be screened; `sent`: what
    /// already went upstream (100 Trying).
    pub fn new(branch: &str, upstream: Peer, invite: &[u8], sent: Option<Vec<u8>>) -> Arc<Txn> {
        let invite: Arc<[u8]> = Arc::from(invite);
        let to_tag = crate::ids::random_hex(6);
        Arc::new(Txn {
            machine: Mutex::new(InviteTxn::new(
                upstream,
                Arc::clone(&invite),
                to_tag.clone(),
                sent,
            )),
            branch: Arc::from(branch),
            upstream,
            invite,
            started: Instant::now(),
            to_tag,
            cancelled: Notify::new(),
            numbers: OnceLock::new(),
        })
    }

    /// Runs `f` on the machine (under its lock; `None` if poisoned).
    pub fn step<R>(&self, f: impl FnOnce(&mut InviteTxn) -> R) -> Option<R> {
        self.machine.lock().ok().map(|mut m| f(&mut m))
    }
}

/// A timer in the heap, earliest first. It names its transaction by
/// branch (a transaction that ended meanwhile is not kept alive by its
/// timers: Timer C waits three minutes).
#[derive(Debug)]
struct Scheduled {
    at: Instant,
    seq: u64,
    branch: Arc<str>,
    timer: Timer,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    /// Reversed: `BinaryHeap` is a max-heap, the earliest must come first.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// Timers fire at most this late (they are batched).
const TIMER_GRANULARITY: Duration = Duration::from_millis(10);

/// Transactions by our branch. Branches derive from incoming ones (chosen
/// by the peer), so the hasher is seeded: foldhash, cheaper than SipHash.
type TxnTable = HashMap<Arc<str>, Arc<Txn>, foldhash::fast::RandomState>;

/// The open transactions of one front-end.
#[derive(Debug)]
pub struct Transactions {
    table: Mutex<TxnTable>,
    timers: Mutex<BinaryHeap<Scheduled>>,
    seq: AtomicU64,
    net: Arc<Network>,
}

impl Transactions {
    /// The table, with its timer task running.
    pub fn start(net: Arc<Network>) -> Arc<Transactions> {
        let t = Arc::new(Transactions {
            table: Mutex::new(TxnTable::default()),
            timers: Mutex::new(BinaryHeap::new()),
            seq: AtomicU64::new(0),
            net,
        });
        tokio::spawn(Transactions::timer_loop(Arc::downgrade(&t)));
        t
    }

    pub fn get(&self, branch: &str) -> Option<Arc<Txn>> {
        self.table.lock().ok().and_then(|t| t.get(branch).cloned())
    }

    pub fn insert(&self, txn: &Arc<Txn>) {
        if let Ok(mut t) = self.table.lock() {
            t.insert(Arc::clone(&txn.branch), Arc::clone(txn));
        }
    }

    /// Transactions open now.
    pub fn open(&self) -> usize {
        self.table.lock().map_or(0, |t| t.len())
    }

    /// Calls being screened or set up: no final response upstream yet
    /// (the others wait out their completion timers).
    pub fn in_setup(&self) -> usize {
        let txns: Vec<Arc<Txn>> = self
            .table
            .lock()
            .map(|t| t.values().cloned().collect())
            .unwrap_or_default();
        txns.iter()
            .filter(|t| t.step(|m| m.in_setup()).unwrap_or(false))
            .count()
    }

    /// Runs `f` on `txn`'s machine and carries out the actions it returns.
    /// Returns the code of a first final response from downstream.
    pub fn run(
        &self,
        txn: &Arc<Txn>,
        f: impl FnOnce(&mut InviteTxn) -> Vec<Action>,
    ) -> Option<u16> {
        let actions = txn.step(f).unwrap_or_default();
        self.apply(txn, actions)
    }

    /// Carries out a machine's actions (after its lock is released):
    /// sends, timers, the end of the transaction.
    pub fn apply(&self, txn: &Arc<Txn>, actions: Vec<Action>) -> Option<u16> {
        let mut first_final = None;
        for a in actions {
            match a {
                Action::Upstream(b) => self.net.send(txn.upstream, b),
                Action::Downstream(to, b) => self.net.send(to, b),
                Action::Arm(timer, at) => self.schedule(txn, timer, at),
                Action::StopScreening => txn.cancelled.notify_one(),
                Action::Final(code) => first_final = Some(code),
                Action::Terminated => {
                    // Only this transaction: its branch may be open again.
                    if let Ok(mut t) = self.table.lock()
                        && t.get(&*txn.branch).is_some_and(|x| Arc::ptr_eq(x, txn))
                    {
                        t.remove(&*txn.branch);
                    }
                }
            }
        }
        first_final
    }

    fn schedule(&self, txn: &Arc<Txn>, timer: Timer, at: Instant) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut h) = self.timers.lock() {
            h.push(Scheduled {
                at,
                seq,
                branch: Arc::clone(&txn.branch),
                timer,
            });
        }
    }

    /// One task for every transaction timer: wakes at the earliest
    /// deadline (at most every `TIMER_GRANULARITY`, at least every T1),
    /// hands what is due to its machine. Ends with the table.
    async fn timer_loop(me: Weak<Transactions>) {
        loop {
            let next = {
                let Some(t) = me.upgrade() else { return };
                let now = Instant::now();
                let earliest = t
                    .timers
                    .lock()
                    .ok()
                    .and_then(|h| h.peek().map(|e| e.at))
                    .unwrap_or(now + T1);
                earliest.clamp(now + TIMER_GRANULARITY, now + T1)
            };
            tokio::time::sleep_until(next.into()).await;
            let Some(t) = me.upgrade() else { return };
            let now = Instant::now();
            let mut due = Vec::new();
            if let Ok(mut h) = t.timers.lock() {
                while h.peek().is_some_and(|e| e.at <= now) {
                    if let Some(e) = h.pop() {
                        due.push(e);
                    }
                }
            }
            for e in due {
                if let Some(txn) = t.get(&e.branch) {
                    t.run(&txn, |m| m.timer(now, e.timer));
                }
            }
        }
    }
}
