//! The load-balanced scheduler: which engine runs each load-balanced task, and when.
//!
//! Pure bookkeeping, no I/O: the hub tells it which engines can take tasks, what it sends and
//! what comes back, and asks it for assignments.
//!
//! - **Least outstanding work, ties to the least recently used**: a task goes to the engine with
//!   the fewest requests outstanding (direct ones count too); among equals, to the one that was
//!   given a task longest ago.
//! - **Pipelining**: an engine may hold several tasks at once, so that it never waits a round
//!   trip between two small ones. How many depends on how long its tasks take: up to
//!   [`MAX_DEPTH`] for tasks of microseconds, down to one at a time for tasks of 100 ms or more
//!   (and until the first run time is known), so that a long task never holds up others that
//!   another engine could run. A deep pipeline is topped up in steps of a quarter of its depth
//!   (once it has that much room), so that tiny tasks reach an engine in packs of a dozen or more
//!   rather than one per reply, while it still holds three quarters of its depth.
//! - **Retries**: a task whose engine died goes back to the front of the queue, never to that
//!   engine again, while it has retries left.
//! - **Timeouts**: a task that waited unassigned longer than its `timeout` leaves the queue (the
//!   hub answers it with `TaskTimeout`).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use parallax_wire::cluster::EngineId;
use parallax_wire::Message;

/// The most tasks in flight on one engine.
pub(crate) const MAX_DEPTH: u32 = 64;
/// How much work, in seconds of task run time, the pipeline of one engine aims to hold.
const PIPELINE_WORK: f64 = 0.004;
/// From this mean run time on, an engine gets one task at a time.
const ONE_AT_A_TIME: f64 = 0.1;
/// How many tasks an engine whose run times are unknown may hold: one, so that a first task
/// that runs long holds up nothing another engine could run.
const FIRST_DEPTH: u32 = 1;
/// Weight of the newest run time in an engine's mean.
const MEAN_WEIGHT: f64 = 0.2;

/// How a load-balanced task may be placed.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Constraints {
    /// The engines it may run on (all when `None`).
    pub targets: Option<Vec<EngineId>>,
    /// How many more times it may run again after it raised.
    pub retries_left: u32,
    /// How many more times it may run again after its engine died under it.
    pub death_retries_left: u32,
    /// When it stops waiting for an engine.
    pub deadline: Option<Instant>,
    /// Engines it may not run on: it raised there, or the engine died running it.
    pub excluded: Vec<EngineId>,
    /// The engines that died while running it, in order.
    pub deaths: Vec<EngineId>,
}

impl Constraints {
    /// Whether the task may run on engine `id`.
    pub fn allows(&self, id: EngineId) -> bool {
        !self.excluded.contains(&id)
            && self
                .targets
                .as_ref()
                .is_none_or(|targets| targets.contains(&id))
    }
}

/// A task waiting for an engine.
#[derive(Debug)]
pub(crate) struct Queued {
    /// The client's request, buffers included.
    pub request: Message,
    pub constraints: Constraints,
}

/// What the scheduler knows of one engine.
#[derive(Debug, Default)]
struct Load {
    /// Takes load-balanced tasks (serving, with engine support).
    open: bool,
    outstanding: u32,
    /// When it was last given a task (in assignments made), for the LRU tie-break.
    last_assigned: u64,
    /// Mean run time of its tasks, in seconds.
    mean_run: Option<f64>,
}

impl Load {
    fn depth(&self) -> u32 {
        match self.mean_run {
            None => FIRST_DEPTH,
            Some(mean) if mean >= ONE_AT_A_TIME => 1,
            Some(mean) => {
                let fits = (PIPELINE_WORK / mean.max(1e-6)).floor() as u32;
                (2 + fits).min(MAX_DEPTH)
            }
        }
    }

    fn has_room(&self) -> bool {
        self.open && self.outstanding < self.depth()
    }

    /// Whether it should be given tasks now: it has room for a quarter of its depth (at least
    /// one task).
    fn wants_more(&self) -> bool {
        let depth = self.depth();
        self.open && self.outstanding + (depth / 4).max(1) <= depth
    }
}

/// The queue of unassigned load-balanced tasks and the engines' loads.
#[derive(Debug, Default)]
pub(crate) struct Scheduler {
    queue: VecDeque<Queued>,
    /// The msg_ids of the queued tasks.
    queued: HashSet<String>,
    /// The deadlines of the queued tasks that have one, with how many tasks share each.
    deadlines: BTreeMap<Instant, u32>,
    engines: BTreeMap<EngineId, Load>,
    assignments: u64,
}

impl Scheduler {
    /// Engine `id` can take load-balanced tasks (again).
    pub fn open(&mut self, id: EngineId) {
        self.engines.entry(id).or_default().open = true;
    }

    /// Engine `id` is gone: it takes nothing more and holds nothing.
    pub fn close(&mut self, id: EngineId) {
        let load = self.engines.entry(id).or_default();
        load.open = false;
        load.outstanding = 0;
    }

    /// A request (direct or load-balanced) was sent to engine `id`.
    pub fn sent(&mut self, id: EngineId) {
        self.engines.entry(id).or_default().outstanding += 1;
    }

    /// Engine `id` answered a request; `run` is how long the task ran there, when known.
    pub fn answered(&mut self, id: EngineId, run: Option<Duration>) {
        let load = self.engines.entry(id).or_default();
        load.outstanding = load.outstanding.saturating_sub(1);
        if let Some(run) = run {
            let seconds = run.as_secs_f64();
            load.mean_run = Some(match load.mean_run {
                None => seconds,
                Some(mean) => mean + MEAN_WEIGHT * (seconds - mean),
            });
        }
    }

    /// Adds a task at the end of the queue.
    pub fn submit(&mut self, task: Queued) {
        self.entered(&task);
        self.queue.push_back(task);
    }

    /// Puts a task whose engine died back at the front of the queue.
    pub fn resubmit(&mut self, task: Queued) {
        self.entered(&task);
        self.queue.push_front(task);
    }

    fn entered(&mut self, task: &Queued) {
        self.queued.insert(task.request.msg_id().to_owned());
        if let Some(at) = task.constraints.deadline {
            *self.deadlines.entry(at).or_default() += 1;
        }
    }

    fn left(&mut self, task: &Queued) {
        self.queued.remove(task.request.msg_id());
        if let Some(at) = task.constraints.deadline {
            if let Some(count) = self.deadlines.get_mut(&at) {
                *count -= 1;
                if *count == 0 {
                    self.deadlines.remove(&at);
                }
            }
        }
    }

    /// Tasks waiting for an engine.
    pub fn unassigned(&self) -> usize {
        self.queue.len()
    }

    /// Takes the queued task `msg_id` out of the queue, if it is there.
    pub fn remove(&mut self, msg_id: &str) -> Option<Queued> {
        if !self.queued.contains(msg_id) {
            return None;
        }
        let index = self
            .queue
            .iter()
            .position(|task| task.request.msg_id() == msg_id)?;
        let task = self.queue.remove(index)?;
        self.left(&task);
        Some(task)
    }

    /// Whether task `msg_id` is queued.
    pub fn contains(&self, msg_id: &str) -> bool {
        self.queued.contains(msg_id)
    }

    /// Takes out the queued tasks whose constraints match `doomed`.
    pub fn take_where(&mut self, doomed: impl Fn(&Constraints) -> bool) -> Vec<Queued> {
        if !self.queue.iter().any(|task| doomed(&task.constraints)) {
            return Vec::new();
        }
        let (taken, kept): (Vec<Queued>, Vec<Queued>) = self
            .queue
            .drain(..)
            .partition(|task| doomed(&task.constraints));
        self.queue = kept.into();
        for task in &taken {
            self.left(task);
        }
        taken
    }

    /// Takes out the tasks whose deadline has passed.
    pub fn expired(&mut self, now: Instant) -> Vec<Queued> {
        if self.next_deadline().is_none_or(|at| at > now) {
            return Vec::new();
        }
        self.take_where(|constraints| constraints.deadline.is_some_and(|at| at <= now))
    }

    /// The next deadline of a queued task.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.keys().next().copied()
    }

    /// Assigns queued tasks to engines that want more (filling each up to its depth), in queue
    /// order (a task no such engine may run waits without holding up the ones behind it). Each
    /// assignment counts as sent.
    pub fn assign(&mut self) -> Vec<(EngineId, Queued)> {
        let mut assigned = Vec::new();
        let filling: Vec<EngineId> = self
            .engines
            .iter()
            .filter(|(_, load)| load.wants_more())
            .map(|(&id, _)| id)
            .collect();
        let mut index = 0;
        while index < self.queue.len() && filling.iter().any(|id| self.engines[id].has_room()) {
            match self.choose(&filling, &self.queue[index].constraints) {
                Some(id) => {
                    let Some(task) = self.queue.remove(index) else {
                        break;
                    };
                    self.left(&task);
                    self.assignments += 1;
                    let load = self.engines.entry(id).or_default();
                    load.outstanding += 1;
                    load.last_assigned = self.assignments;
                    assigned.push((id, task));
                }
                None => index += 1,
            }
        }
        assigned
    }

    /// Open engines with nothing outstanding.
    pub fn idle(&self) -> Vec<EngineId> {
        self.engines
            .iter()
            .filter(|(_, load)| load.open && load.outstanding == 0)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Whether engine `id` may run a task with these constraints (it is open, allowed and has
    /// room).
    pub fn can_take(&self, id: EngineId, constraints: &Constraints) -> bool {
        self.engines
            .get(&id)
            .is_some_and(|load| load.has_room() && constraints.allows(id))
    }

    fn choose(&self, among: &[EngineId], constraints: &Constraints) -> Option<EngineId> {
        among
            .iter()
            .filter_map(|id| self.engines.get(id).map(|load| (*id, load)))
            .filter(|(id, load)| load.has_room() && constraints.allows(*id))
            .min_by_key(|(_, load)| (load.outstanding, load.last_assigned))
            .map(|(id, _)| id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parallax_wire::Session;
    use serde_json::json;

    fn task(constraints: Constraints) -> Queued {
        let session = Session::new(b"k", "test");
        Queued {
            request: session.message("apply_request", &json!({})),
            constraints,
        }
    }

    fn ids(assigned: &[(EngineId, Queued)]) -> Vec<EngineId> {
        assigned.iter().map(|(id, _)| *id).collect()
    }

    #[test]
    fn least_outstanding_then_least_recently_used() {
        let mut scheduler = Scheduler::default();
        scheduler.open(0);
        scheduler.open(1);
        scheduler.answered(0, Some(Duration::from_millis(1)));
        scheduler.answered(1, Some(Duration::from_millis(1)));
        scheduler.sent(0); // a direct request keeps engine 0 busier
        for _ in 0..5 {
            scheduler.submit(task(Constraints::default()));
        }
        // Depth 6 for 1 ms tasks: 1 first, then turns by load and recency.
        assert_eq!(ids(&scheduler.assign()), vec![1, 0, 1, 0, 1]);
        assert_eq!(scheduler.unassigned(), 0);
        for _ in 0..7 {
            scheduler.submit(task(Constraints::default()));
        }
        assert_eq!(ids(&scheduler.assign()), vec![0, 1, 0, 1, 0, 1]);
        assert_eq!(scheduler.unassigned(), 1, "every engine is full");
        scheduler.answered(1, Some(Duration::from_millis(1)));
        assert_eq!(ids(&scheduler.assign()), vec![1]);
    }

    #[test]
    fn depth_follows_run_time() {
        let mut load = Load {
            open: true,
            ..Load::default()
        };
        assert_eq!(load.depth(), FIRST_DEPTH);
        load.mean_run = Some(0.5);
        assert_eq!(load.depth(), 1);
        load.mean_run = Some(0.002);
        assert_eq!(load.depth(), 4);
        load.mean_run = Some(0.000_001);
        assert_eq!(load.depth(), MAX_DEPTH);
    }

    #[test]
    fn a_deep_pipeline_is_topped_up_a_quarter_at_a_time() {
        let mut scheduler = Scheduler::default();
        scheduler.open(0);
        scheduler.answered(0, Some(Duration::from_micros(1)));
        for _ in 0..200 {
            scheduler.submit(task(Constraints::default()));
        }
        assert_eq!(
            scheduler.assign().len(),
            MAX_DEPTH as usize,
            "filled to its depth"
        );
        let quarter = MAX_DEPTH / 4;
        for _ in 0..quarter - 1 {
            scheduler.answered(0, Some(Duration::from_micros(1)));
        }
        assert!(scheduler.assign().is_empty(), "not yet a quarter of room");
        scheduler.answered(0, Some(Duration::from_micros(1)));
        assert_eq!(
            scheduler.assign().len(),
            quarter as usize,
            "one step of a quarter"
        );
        // Shallow pipelines (1 ms tasks: depth 6) are topped up one task at a time.
        let mut shallow = Scheduler::default();
        shallow.open(0);
        shallow.answered(0, Some(Duration::from_millis(1)));
        for _ in 0..10 {
            shallow.submit(task(Constraints::default()));
        }
        assert_eq!(shallow.assign().len(), 6);
        shallow.answered(0, Some(Duration::from_millis(1)));
        assert_eq!(shallow.assign().len(), 1);
    }

    #[test]
    fn targets_and_exclusions_are_respected_without_blocking_the_queue() {
        let mut scheduler = Scheduler::default();
        scheduler.open(0);
        scheduler.open(1);
        scheduler.submit(task(Constraints {
            targets: Some(vec![5]),
            ..Constraints::default()
        }));
        scheduler.submit(task(Constraints {
            excluded: vec![0],
            ..Constraints::default()
        }));
        scheduler.submit(task(Constraints {
            targets: Some(vec![0]),
            ..Constraints::default()
        }));
        assert_eq!(ids(&scheduler.assign()), vec![1, 0]);
        assert_eq!(scheduler.unassigned(), 1, "the task for engine 5 waits");
        assert!(
            scheduler.assign().is_empty(),
            "one task each until run times are known"
        );
        let taken = scheduler.take_where(|c| c.targets.as_deref() == Some(&[5]));
        assert_eq!(taken.len(), 1);
    }

    #[test]
    fn expired_and_removed_tasks_leave_the_queue() {
        let mut scheduler = Scheduler::default();
        let now = Instant::now();
        scheduler.submit(task(Constraints {
            deadline: Some(now),
            ..Constraints::default()
        }));
        let keep = task(Constraints::default());
        let keep_id = keep.request.msg_id().to_owned();
        scheduler.submit(keep);
        assert_eq!(scheduler.next_deadline(), Some(now));
        assert_eq!(scheduler.expired(now).len(), 1);
        assert_eq!(scheduler.next_deadline(), None);
        assert!(scheduler.remove(&keep_id).is_some());
        assert_eq!(scheduler.unassigned(), 0);
    }
}
