//! One tier's queue: jobs in FIFO order with rank queries.
//!
//! `position` needs "how many jobs are ahead of this one" and "how many jobs
//! are aged" on every submit and poll, over queues of 100k+ jobs, so a plain
//! ordered map (O(n) to count) will not do. This is a treap (a binary search
//! tree whose nodes also form a heap on random priorities, so its expected
//! depth is O(log n) whatever the insertion order) whose nodes count their
//! subtree. Every operation is expected O(log n), including inserts out of
//! FIFO order (re-queued jobs, jobs loaded at start-up) and removal of any job.
//! Each job is stored once, in its node: the key is borrowed from the job.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use videogen_core::{QueuedJob, VideoId};

/// FIFO order: enqueue time, then id.
pub(crate) type FifoKey<'a> = (i64, &'a VideoId);

fn key(job: &QueuedJob) -> FifoKey<'_> {
    (job.enqueued_at_ms, &job.id)
}

type Link = Option<Box<Node>>;

#[derive(Clone)]
struct Node {
    job: QueuedJob,
    /// Heap priority: a parent's is never lower than its children's.
    prio: u64,
    /// Jobs in this subtree, this one included.
    size: usize,
    left: Link,
    right: Link,
}

impl Node {
    fn fix_size(&mut self) {
        self.size = 1 + size(&self.left) + size(&self.right);
    }
}

fn size(link: &Link) -> usize {
    link.as_ref().map_or(0, |n| n.size)
}

/// Jobs ordered by [`FifoKey`], with keys unique (the scheduler's id index
/// guarantees it: an id is queued at most once).
#[derive(Clone)]
pub(crate) struct Fifo {
    root: Link,
    /// SplitMix64 state for priorities. Randomly seeded so that no one can
    /// line jobs up into a deep path; priorities shape the tree, never results.
    rng: u64,
}

impl Fifo {
    pub(crate) fn new() -> Self {
        Self {
            root: None,
            rng: RandomState::new().hash_one(0u8),
        }
    }

    pub(crate) fn len(&self) -> usize {
        size(&self.root)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.root.is_none()
    }

    /// The head: the oldest job.
    pub(crate) fn first(&self) -> Option<&QueuedJob> {
        let mut node = self.root.as_deref()?;
        while let Some(left) = node.left.as_deref() {
            node = left;
        }
        Some(&node.job)
    }

    pub(crate) fn get(&self, k: FifoKey<'_>) -> Option<&QueuedJob> {
        let mut link = &self.root;
        while let Some(n) = link {
            link = match k.cmp(&key(&n.job)) {
                Ordering::Less => &n.left,
                Ordering::Greater => &n.right,
                Ordering::Equal => return Some(&n.job),
            };
        }
        None
    }

    /// Adds a job whose key is not queued yet.
    pub(crate) fn insert(&mut self, job: QueuedJob) {
        debug_assert!(self.get(key(&job)).is_none(), "duplicate FIFO key");
        let node = Box::new(Node {
            job,
            prio: self.next_prio(),
            size: 1,
            left: None,
            right: None,
        });
        insert(&mut self.root, node);
    }

    pub(crate) fn remove(&mut self, k: FifoKey<'_>) -> Option<QueuedJob> {
        remove(&mut self.root, k)
    }

    #[cfg(test)]
    pub(crate) fn pop_first(&mut self) -> Option<QueuedJob> {
        pop_first(&mut self.root)
    }

    /// How many jobs from the head on satisfy `pred`, which must hold for a
    /// prefix of the queue and for nothing after it.
    pub(crate) fn count_while(&self, mut pred: impl FnMut(&QueuedJob) -> bool) -> usize {
        let mut count = 0;
        let mut link = &self.root;
        while let Some(n) = link {
            if pred(&n.job) {
                count += size(&n.left) + 1;
                link = &n.right;
            } else {
                link = &n.left;
            }
        }
        count
    }

    /// How many queued jobs come before `k` in FIFO order.
    pub(crate) fn rank(&self, k: FifoKey<'_>) -> usize {
        self.count_while(|j| key(j) < k)
    }

    /// Jobs in FIFO order.
    pub(crate) fn iter(&self) -> Iter<'_> {
        // Room for a typical path, so that a short scan does not reallocate.
        let mut it = Iter {
            stack: Vec::with_capacity(32),
        };
        it.push_left(&self.root);
        it
    }

    fn next_prio(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Panics unless keys are in order, priorities form a heap and sizes are right.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        fn walk(link: &Link, bound: u64) -> usize {
            let Some(n) = link else { return 0 };
            assert!(n.prio <= bound, "heap order");
            let size = walk(&n.left, n.prio) + 1 + walk(&n.right, n.prio);
            assert_eq!(n.size, size, "subtree size");
            size
        }
        assert_eq!(walk(&self.root, u64::MAX), self.len());
        let keys: Vec<_> = self.iter().map(key).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "key order");
    }
}

impl fmt::Debug for Fifo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Inserts `node` below `link`: it goes where its priority puts it on the
/// search path, and the subtree it displaces is split around its key.
fn insert(link: &mut Link, mut node: Box<Node>) {
    match link {
        Some(n) if n.prio >= node.prio => {
            n.size += 1;
            let child = if key(&node.job) < key(&n.job) {
                &mut n.left
            } else {
                &mut n.right
            };
            insert(child, node);
        }
        _ => {
            let (left, right) = split(link.take(), key(&node.job));
            node.left = left;
            node.right = right;
            node.fix_size();
            *link = Some(node);
        }
    }
}

/// Splits a subtree into the jobs before `k` and the jobs from `k` on.
fn split(link: Link, k: FifoKey<'_>) -> (Link, Link) {
    let Some(mut n) = link else {
        return (None, None);
    };
    if key(&n.job) < k {
        let (left, right) = split(n.right.take(), k);
        n.right = left;
        n.fix_size();
        (Some(n), right)
    } else {
        let (left, right) = split(n.left.take(), k);
        n.left = right;
        n.fix_size();
        (left, Some(n))
    }
}

/// Joins two subtrees where every key in `a` is below every key in `b`.
fn merge(a: Link, b: Link) -> Link {
    match (a, b) {
        (None, t) | (t, None) => t,
        (Some(mut a), Some(mut b)) => {
            if a.prio >= b.prio {
                a.right = merge(a.right.take(), Some(b));
                a.fix_size();
                Some(a)
            } else {
                b.left = merge(Some(a), b.left.take());
                b.fix_size();
                Some(b)
            }
        }
    }
}

fn remove(link: &mut Link, k: FifoKey<'_>) -> Option<QueuedJob> {
    let n = link.as_mut()?;
    let removed = match k.cmp(&key(&n.job)) {
        Ordering::Less => remove(&mut n.left, k),
        Ordering::Greater => remove(&mut n.right, k),
        Ordering::Equal => {
            let mut n = link.take()?;
            *link = merge(n.left.take(), n.right.take());
            return Some(n.job);
        }
    };
    if removed.is_some() {
        n.size -= 1;
    }
    removed
}

#[cfg(test)]
fn pop_first(link: &mut Link) -> Option<QueuedJob> {
    let n = link.as_mut()?;
    if n.left.is_some() {
        n.size -= 1;
        return pop_first(&mut n.left);
    }
    let mut n = link.take()?;
    *link = n.right.take();
    Some(n.job)
}

/// In-order iterator; holds the path to the next job.
pub(crate) struct Iter<'a> {
    stack: Vec<&'a Node>,
}

impl<'a> Iter<'a> {
    fn push_left(&mut self, mut link: &'a Link) {
        while let Some(n) = link {
            self.stack.push(n);
            link = &n.left;
        }
    }
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a QueuedJob;

    fn next(&mut self) -> Option<&'a QueuedJob> {
        let n = self.stack.pop()?;
        self.push_left(&n.right);
        Some(&n.job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use videogen_core::{TenantId, Tier};

    fn job(n: u64, at_ms: i64) -> QueuedJob {
        QueuedJob {
            id: VideoId::parse(&format!("video_{n:032x}")).expect("valid id"),
            tenant: TenantId::parse("t").expect("valid tenant"),
            tier: Tier::Free,
            model: "m".to_owned(),
            enqueued_at_ms: at_ms,
            not_before_ms: None,
        }
    }

    /// Thousands of jobs in scrambled order, then removals from anywhere and
    /// from the head: order, sizes and ranks stay those of a sorted map.
    #[test]
    fn matches_a_sorted_map_under_scrambled_inserts_and_removals() {
        let mut fifo = Fifo::new();
        let mut naive = BTreeMap::new();
        // n * 7919 mod 5000 visits every n once, far from sorted order.
        for n in (0..5_000u64).map(|n| n * 7_919 % 5_000) {
            let j = job(n, (n % 700) as i64);
            naive.insert((j.enqueued_at_ms, j.id.clone()), j.clone());
            fifo.insert(j);
        }
        for n in (0..5_000u64).filter(|n| n % 3 == 0) {
            let k = (n % 700) as i64;
            let id = job(n, k).id;
            assert_eq!(fifo.remove((k, &id)), naive.remove(&(k, id.clone())));
            assert_eq!(fifo.remove((k, &id)), None);
        }
        for _ in 0..500 {
            assert_eq!(fifo.pop_first(), naive.pop_first().map(|(_, j)| j));
        }
        fifo.check_invariants();
        assert_eq!(fifo.len(), naive.len());
        assert!(fifo.iter().eq(naive.values()));
        assert_eq!(fifo.first(), naive.values().next());
        for (ix, (enq, id)) in naive.keys().enumerate() {
            assert_eq!(fifo.rank((*enq, id)), ix);
            assert_eq!(fifo.get((*enq, id)).map(|j| &j.id), Some(id));
        }
        assert_eq!(
            fifo.count_while(|j| j.enqueued_at_ms < 350),
            naive.range(..(350, job(0, 0).id)).count()
        );
    }

    #[test]
    fn empty_queue_answers_nothing() {
        let mut fifo = Fifo::new();
        let j = job(1, 0);
        assert!(fifo.is_empty());
        assert_eq!(fifo.first(), None);
        assert_eq!(fifo.pop_first(), None);
        assert_eq!(fifo.remove((0, &j.id)), None);
        assert_eq!(fifo.rank((0, &j.id)), 0);
        assert_eq!(fifo.iter().count(), 0);
        assert_eq!(format!("{fifo:?}"), "[]");
    }
}
