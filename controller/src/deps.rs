//! Task dependencies of load-balanced tasks, as in ipyparallel: `after` (run only once other
//! tasks are done) and `follow` (run only on the engine where other tasks ran).
//!
//! [`Waiting`] keeps the outcome of every finished task (whether it succeeded, and where it
//! ran) and the tasks whose dependencies are not met yet. When a task finishes, the tasks that
//! wait on it are judged again: each is [`Verdict::Ready`] (it goes to the scheduler, limited
//! to the engines it must follow), still waits, or can never run ([`Verdict::Impossible`]: it
//! fails, and its failure is an outcome in turn for the tasks that wait on it).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use parallax_wire::cluster::{Dependency, EngineId};

use crate::scheduler::Queued;

/// How a finished task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub ok: bool,
    /// The engine it ran on (none when it failed before reaching one).
    pub engine: Option<EngineId>,
}

/// A load-balanced task's dependencies.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Needs {
    pub after: Option<Dependency>,
    pub follow: Option<Dependency>,
}

impl Needs {
    pub fn new(after: Option<Dependency>, follow: Option<Dependency>) -> Self {
        Needs {
            after: after.filter(|d| !d.is_empty()),
            follow: follow.filter(|d| !d.is_empty()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.after.is_none() && self.follow.is_none()
    }

    pub fn ids(&self) -> impl Iterator<Item = &String> {
        let after = self.after.iter().flat_map(|d| d.ids.iter());
        after.chain(self.follow.iter().flat_map(|d| d.ids.iter()))
    }
}

/// What a task's dependencies allow now.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    /// It may run: anywhere (`None`) or only on these engines.
    Ready(Option<Vec<EngineId>>),
    Wait,
    /// It can never run; why.
    Impossible(String),
}

/// Whether a finished task counts toward `dependency`.
fn counts(dependency: &Dependency, outcome: &Outcome) -> bool {
    if outcome.ok {
        dependency.success
    } else {
        dependency.failure
    }
}

fn how(outcome: &Outcome) -> &'static str {
    if outcome.ok {
        "succeeded"
    } else {
        "failed"
    }
}

/// Why `dependency` can never be met, if it cannot.
fn unreachable(
    dependency: &Dependency,
    outcome: &impl Fn(&str) -> Option<Outcome>,
) -> Option<String> {
    if dependency.all {
        dependency.ids.iter().find_map(|id| {
            let done = outcome(id).filter(|o| !counts(dependency, o))?;
            Some(format!("task {id} {}", how(&done)))
        })
    } else {
        let outcomes: Vec<Outcome> = dependency.ids.iter().filter_map(|id| outcome(id)).collect();
        (outcomes.len() == dependency.ids.len() && !outcomes.iter().any(|o| counts(dependency, o)))
            .then(|| {
                let wanted = if dependency.success {
                    "succeeded"
                } else {
                    "failed"
                };
                format!(
                    "none of the {} tasks it depends on {wanted}",
                    outcomes.len()
                )
            })
    }
}

/// Whether `dependency` is met: all (or any) of its tasks finished the way it counts.
fn met(dependency: &Dependency, outcome: &impl Fn(&str) -> Option<Outcome>) -> bool {
    let mut counted = dependency
        .ids
        .iter()
        .map(|id| outcome(id).is_some_and(|o| counts(dependency, &o)));
    if dependency.all {
        counted.all(|c| c)
    } else {
        counted.any(|c| c)
    }
}

/// What `needs` allow, given the outcomes of finished tasks (`outcome` is `None` for a task
/// not finished yet).
fn judge(needs: &Needs, outcome: impl Fn(&str) -> Option<Outcome>) -> Verdict {
    for dependency in needs.after.iter().chain(&needs.follow) {
        if let Some(why) = unreachable(dependency, &outcome) {
            return Verdict::Impossible(format!("its dependency cannot be met: {why}"));
        }
    }
    if needs.after.as_ref().is_some_and(|d| !met(d, &outcome)) {
        return Verdict::Wait;
    }
    let Some(follow) = &needs.follow else {
        return Verdict::Ready(None);
    };
    // Where the tasks it follows ran, of those finished the way it counts.
    let mut places: BTreeMap<Option<EngineId>, usize> = BTreeMap::new();
    let mut finished = 0;
    for id in &follow.ids {
        if let Some(done) = outcome(id) {
            finished += 1;
            if counts(follow, &done) {
                *places.entry(done.engine).or_default() += 1;
            }
        }
    }
    if follow.all {
        if finished < follow.ids.len() {
            return Verdict::Wait;
        }
        let engines: Vec<Option<EngineId>> = places.into_keys().collect();
        match engines.as_slice() {
            [Some(engine)] => Verdict::Ready(Some(vec![*engine])),
            _ => Verdict::Impossible(format!(
                "the tasks it follows did not all run on one engine (they ran on {})",
                describe(&engines)
            )),
        }
    } else {
        let engines: Vec<EngineId> = places.into_keys().flatten().collect();
        if !engines.is_empty() {
            Verdict::Ready(Some(engines))
        } else if finished == follow.ids.len() {
            Verdict::Impossible("none of the tasks it follows ran on an engine".into())
        } else {
            Verdict::Wait
        }
    }
}

fn describe(engines: &[Option<EngineId>]) -> String {
    let names: Vec<String> = engines
        .iter()
        .map(|e| e.map_or("no engine".into(), |id| format!("engine {id}")))
        .collect();
    names.join(", ")
}

/// A task released by [`Waiting::settle`]: it may run (anywhere, or on these engines), or
/// never can (why).
pub(crate) type Settled = (Queued, Result<Option<Vec<EngineId>>, String>);

/// A task waiting for its dependencies.
#[derive(Debug)]
struct Blocked {
    queued: Queued,
    needs: Needs,
}

/// Outcomes of finished tasks, and the tasks waiting for them. See the module doc.
#[derive(Debug, Default)]
pub(crate) struct Waiting {
    outcomes: HashMap<Box<str>, Outcome>,
    blocked: HashMap<String, Blocked>,
    /// msg_id of an unfinished task → the blocked tasks that depend on it.
    dependents: HashMap<String, Vec<String>>,
    /// Blocked tasks to judge again: a task they depend on finished.
    touched: BTreeSet<String>,
    /// (deadline, msg_id) of blocked tasks with a timeout.
    deadlines: BTreeSet<(Instant, String)>,
}

impl Waiting {
    /// How task `msg_id` ended, if it has.
    pub fn outcome(&self, msg_id: &str) -> Option<Outcome> {
        self.outcomes.get(msg_id).copied()
    }

    /// Task `msg_id` finished: the tasks waiting for it are judged at the next [`settle`].
    ///
    /// [`settle`]: Self::settle
    pub fn finished(&mut self, msg_id: &str, outcome: Outcome) {
        self.outcomes.insert(msg_id.into(), outcome);
        if let Some(dependents) = self.dependents.remove(msg_id) {
            self.touched.extend(dependents);
        }
    }

    /// Forgets the outcomes of finished tasks (`None`: of all of them), as `purge_results` does
    /// for their records.
    pub fn forget(&mut self, msg_ids: Option<&[String]>) {
        match msg_ids {
            Some(ids) => {
                for id in ids {
                    self.outcomes.remove(id.as_str());
                }
            }
            None => self.outcomes.clear(),
        }
    }

    /// Holds a task until its dependencies are met; the next [`settle`] judges it a first time.
    ///
    /// [`settle`]: Self::settle
    pub fn hold(&mut self, queued: Queued, needs: Needs) {
        let msg_id = queued.request.msg_id().to_owned();
        let unfinished: BTreeSet<&String> = needs
            .ids()
            .filter(|id| !self.outcomes.contains_key(id.as_str()))
            .collect();
        for id in unfinished {
            self.dependents
                .entry(id.clone())
                .or_default()
                .push(msg_id.clone());
        }
        if let Some(at) = queued.constraints.deadline {
            self.deadlines.insert((at, msg_id.clone()));
        }
        self.touched.insert(msg_id.clone());
        self.blocked.insert(msg_id, Blocked { queued, needs });
    }

    pub fn contains(&self, msg_id: &str) -> bool {
        self.blocked.contains_key(msg_id)
    }

    /// How many tasks wait for their dependencies.
    pub fn blocked(&self) -> usize {
        self.blocked.len()
    }

    /// Takes a blocked task out (aborted, or its timeout passed).
    pub fn remove(&mut self, msg_id: &str) -> Option<Queued> {
        let blocked = self.blocked.remove(msg_id)?;
        if let Some(at) = blocked.queued.constraints.deadline {
            self.deadlines.remove(&(at, msg_id.to_owned()));
        }
        for id in blocked.needs.ids() {
            if let Some(dependents) = self.dependents.get_mut(id) {
                dependents.retain(|d| d != msg_id);
                if dependents.is_empty() {
                    self.dependents.remove(id);
                }
            }
        }
        self.touched.remove(msg_id);
        Some(blocked.queued)
    }

    /// The blocked tasks whose dependencies finished and that may now run (`Ok`: anywhere, or
    /// on these engines) or never can (`Err`: why); the others keep waiting.
    pub fn settle(&mut self) -> Vec<Settled> {
        let mut settled = Vec::new();
        for msg_id in std::mem::take(&mut self.touched) {
            let Some(blocked) = self.blocked.get(&msg_id) else {
                continue;
            };
            let verdict = match judge(&blocked.needs, |id| self.outcome(id)) {
                Verdict::Wait => continue,
                Verdict::Ready(places) => Ok(places),
                Verdict::Impossible(why) => Err(why),
            };
            if let Some(queued) = self.remove(&msg_id) {
                settled.push((queued, verdict));
            }
        }
        settled
    }

    /// Blocked tasks whose timeout has passed.
    pub fn expired(&mut self, now: Instant) -> Vec<Queued> {
        let due: Vec<String> = self
            .deadlines
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, msg_id)| msg_id.clone())
            .collect();
        due.iter()
            .filter_map(|msg_id| self.remove(msg_id))
            .collect()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.iter().next().map(|(at, _)| *at)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use parallax_wire::Session;
    use serde_json::json;

    use super::*;
    use crate::scheduler::Constraints;

    fn dep(ids: &[&str], all: bool, success: bool, failure: bool) -> Dependency {
        Dependency {
            ids: ids.iter().map(|s| s.to_string()).collect(),
            all,
            success,
            failure,
        }
    }

    fn on(ids: &[&str]) -> Dependency {
        dep(ids, true, true, false)
    }

    const OK0: Outcome = Outcome {
        ok: true,
        engine: Some(0),
    };
    const OK1: Outcome = Outcome {
        ok: true,
        engine: Some(1),
    };
    const FAILED0: Outcome = Outcome {
        ok: false,
        engine: Some(0),
    };
    const FAILED_NOWHERE: Outcome = Outcome {
        ok: false,
        engine: None,
    };

    fn outcomes(known: &[(&str, Outcome)]) -> impl Fn(&str) -> Option<Outcome> {
        let known: HashMap<String, Outcome> =
            known.iter().map(|(k, o)| (k.to_string(), *o)).collect();
        move |id| known.get(id).copied()
    }

    fn after(d: Dependency) -> Needs {
        Needs::new(Some(d), None)
    }

    fn follow(d: Dependency) -> Needs {
        Needs::new(None, Some(d))
    }

    #[test]
    fn after_waits_for_all_its_tasks_to_succeed() {
        let needs = after(on(&["a", "b"]));
        assert_eq!(judge(&needs, outcomes(&[])), Verdict::Wait);
        assert_eq!(judge(&needs, outcomes(&[("a", OK0)])), Verdict::Wait);
        assert_eq!(
            judge(&needs, outcomes(&[("a", OK0), ("b", OK1)])),
            Verdict::Ready(None)
        );
        let Verdict::Impossible(why) = judge(&needs, outcomes(&[("b", FAILED0)])) else {
            panic!("a failed dependency makes success impossible");
        };
        assert_eq!(why, "its dependency cannot be met: task b failed");
    }

    #[test]
    fn any_success_or_failure_choose_what_counts() {
        let any = after(dep(&["a", "b"], false, true, false));
        assert_eq!(judge(&any, outcomes(&[("a", FAILED0)])), Verdict::Wait);
        assert_eq!(
            judge(&any, outcomes(&[("a", FAILED0), ("b", OK1)])),
            Verdict::Ready(None)
        );
        assert!(matches!(
            judge(&any, outcomes(&[("a", FAILED0), ("b", FAILED_NOWHERE)])),
            Verdict::Impossible(_)
        ));
        let on_failure = after(dep(&["a"], true, false, true));
        assert_eq!(
            judge(&on_failure, outcomes(&[("a", FAILED0)])),
            Verdict::Ready(None)
        );
        assert!(matches!(
            judge(&on_failure, outcomes(&[("a", OK0)])),
            Verdict::Impossible(_)
        ));
        let either = after(dep(&["a", "b"], true, true, true));
        assert_eq!(
            judge(&either, outcomes(&[("a", FAILED0), ("b", OK1)])),
            Verdict::Ready(None)
        );
    }

    #[test]
    fn follow_runs_where_its_tasks_ran() {
        let all = follow(on(&["a", "b"]));
        assert_eq!(judge(&all, outcomes(&[("a", OK1)])), Verdict::Wait);
        assert_eq!(
            judge(&all, outcomes(&[("a", OK1), ("b", OK1)])),
            Verdict::Ready(Some(vec![1]))
        );
        let Verdict::Impossible(why) = judge(&all, outcomes(&[("a", OK0), ("b", OK1)])) else {
            panic!("two engines cannot both be followed");
        };
        assert!(why.contains("engine 0, engine 1"), "{why}");
        let any = follow(dep(&["a", "b"], false, true, false));
        assert_eq!(
            judge(&any, outcomes(&[("b", OK1)])),
            Verdict::Ready(Some(vec![1]))
        );
        assert_eq!(
            judge(&any, outcomes(&[("a", OK0), ("b", OK1)])),
            Verdict::Ready(Some(vec![0, 1]))
        );
        let failed_nowhere = follow(dep(&["a"], true, false, true));
        assert!(matches!(
            judge(&failed_nowhere, outcomes(&[("a", FAILED_NOWHERE)])),
            Verdict::Impossible(_)
        ));
        let both = Needs::new(Some(on(&["a"])), Some(on(&["b"])));
        assert_eq!(judge(&both, outcomes(&[("b", OK1)])), Verdict::Wait);
        assert_eq!(
            judge(&both, outcomes(&[("a", OK0), ("b", OK1)])),
            Verdict::Ready(Some(vec![1]))
        );
    }

    fn queued(session: &Session, deadline: Option<Instant>) -> Queued {
        Queued {
            request: session.message("apply_request", &json!({})),
            constraints: Constraints {
                deadline,
                ..Constraints::default()
            },
        }
    }

    #[test]
    fn blocked_tasks_are_released_when_their_tasks_finish() {
        let session = Session::new(b"key", "test");
        let mut waiting = Waiting::default();
        let first = queued(&session, None);
        let first_id = first.request.msg_id().to_owned();
        waiting.hold(first, after(on(&["a", "b"])));
        let second = queued(&session, None);
        let second_id = second.request.msg_id().to_owned();
        waiting.hold(second, follow(on(&["a"])));
        waiting.finished("a", OK0);
        let settled = waiting.settle();
        assert_eq!(settled.len(), 1);
        assert_eq!(settled[0].0.request.msg_id(), second_id);
        assert_eq!(settled[0].1, Ok(Some(vec![0])));
        assert!(waiting.contains(&first_id) && waiting.blocked.len() == 1);
        waiting.finished("b", FAILED0);
        let settled = waiting.settle();
        assert!(settled[0].1.is_err());
        assert!(waiting.blocked.is_empty());
        assert!(waiting.dependents.is_empty() && waiting.settle().is_empty());
        assert_eq!(waiting.outcome("b"), Some(FAILED0));
        // Held once its tasks have finished: the next settle judges it all the same.
        let met = queued(&session, None);
        let met_id = met.request.msg_id().to_owned();
        waiting.hold(met, follow(on(&["a"])));
        waiting.hold(queued(&session, None), after(on(&["b"])));
        let settled = waiting.settle();
        assert_eq!(settled.len(), 2);
        let (released, failed): (Vec<_>, Vec<_>) = settled.iter().partition(|(_, v)| v.is_ok());
        assert_eq!(released[0].0.request.msg_id(), met_id);
        assert_eq!(released[0].1, Ok(Some(vec![0])));
        assert_eq!(
            failed[0].1,
            Err("its dependency cannot be met: task b failed".to_string())
        );
        assert!(waiting.blocked.is_empty() && waiting.dependents.is_empty());
        waiting.forget(Some(&["b".to_string()]));
        assert_eq!(waiting.outcome("b"), None);
        assert_eq!(waiting.outcome("a"), Some(OK0));
    }

    #[test]
    fn blocked_tasks_time_out_and_can_be_removed() {
        let session = Session::new(b"key", "test");
        let mut waiting = Waiting::default();
        let now = Instant::now();
        let soon = queued(&session, Some(now + Duration::from_millis(10)));
        let soon_id = soon.request.msg_id().to_owned();
        waiting.hold(soon, after(on(&["a"])));
        let later = queued(&session, Some(now + Duration::from_secs(60)));
        let later_id = later.request.msg_id().to_owned();
        waiting.hold(later, after(on(&["a"])));
        assert_eq!(
            waiting.next_deadline(),
            Some(now + Duration::from_millis(10))
        );
        assert!(waiting.expired(now).is_empty());
        let expired = waiting.expired(now + Duration::from_secs(1));
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].request.msg_id(), soon_id);
        assert!(waiting.remove(&later_id).is_some());
        assert_eq!(waiting.next_deadline(), None);
        assert!(waiting.dependents.is_empty());
        waiting.finished("a", OK0);
        assert!(waiting.settle().is_empty());
    }
}
