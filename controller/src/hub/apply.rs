//! `apply_request`s: sent to the engine support inside an engine's kernel, directly (the
//! request names its engine) or through the load-balanced [`Scheduler`]; and what happens to
//! them when they are aborted, time out, or lose their engine.
//!
//! Pipelining has a cost at the end of a batch: a task queued on an engine behind a long one
//! waits although another engine has gone idle. So when nothing is left to assign and an
//! engine is idle, the newest load-balanced task queued on the busiest engine is *reclaimed*:
//! the hub asks that engine's support to drop it if it has not started (`abort_request`); an
//! `aborted` answer puts it back at the front of the queue, for the idle engine. A task that
//! had started just finishes where it is.
//!
//! [`Scheduler`]: crate::scheduler::Scheduler

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use parallax_wire::cluster::{
    died_while_running, killed_engines, pack_format_mismatch, AbortRequest, ApplyRouting,
    AttachRequest, EngineId, ENGINE_ERROR, IMPOSSIBLE_DEPENDENCY, INVALID_DEPENDENCY, TASK_ABORTED,
    TASK_KILLED_ENGINES, TASK_TIMEOUT,
};
use parallax_wire::pack::PACK_VERSION;
use parallax_wire::replies::error_content;
use parallax_wire::Bytes;
use parallax_wire::{now_iso8601, Message};
use serde_json::json;

use super::clients::{new_record, ROUTING_ERROR};
use super::{error_fields, execute_error, Hub};
use crate::db::{Change, Command};
use crate::deps::{Needs, Outcome};
use crate::registry::Registry;
use crate::scheduler::{Constraints, Queued};

impl Hub {
    /// The engine support of engine `uuid`'s kernel has connected: apply requests for that
    /// engine go to it from now on.
    pub(super) async fn on_attach(&mut self, message: Message) {
        let content = match message.content_as::<AttachRequest>() {
            Ok(attach) => match pack_format_mismatch("engine support", attach.packs) {
                Some(reason) => {
                    tracing::warn!(uuid = %attach.uuid, %reason, "engine support refused");
                    error_content("VersionMismatch", &reason)
                }
                None => {
                    tracing::info!(uuid = %attach.uuid, packs = attach.packs, "engine support attached");
                    self.attach(attach, &message.identities);
                    json!({"status": "ok"})
                }
            },
            Err(error) => error_content("ValueError", &format!("invalid attach_request: {error}")),
        };
        let reply = self.session.reply(&message, "attach_reply", &content);
        self.to_engine(reply).await;
        self.dispatch().await;
    }

    fn attach(&mut self, attach: AttachRequest, route: &[Bytes]) {
        if attach.packs == PACK_VERSION {
            self.engine_packs.allow(route);
        }
        self.attached.insert(attach.uuid.clone(), route.to_vec());
        if let Some(id) = self.registry.by_uuid(&attach.uuid) {
            self.registry.set_support(id, Some(route.to_vec()));
            self.open_if_serving(id);
        }
    }

    /// Lets the scheduler give engine `id` tasks if it serves and its kernel has the support.
    pub(super) fn open_if_serving(&mut self, id: EngineId) {
        match self.registry.get(id) {
            Some(engine) if engine.is_serving() && engine.support.is_some() => {
                self.scheduler.open(id)
            }
            _ => self.scheduler.close(id),
        }
    }

    pub(super) async fn on_apply(&mut self, message: Message) {
        let routing = match message.metadata_as::<ApplyRouting>() {
            Ok(routing) => routing,
            Err(error) => {
                let evalue = format!("invalid apply_request metadata: {error}");
                return self
                    .reject(message, None, ROUTING_ERROR, &evalue, true)
                    .await;
            }
        };
        if self.tasks.contains_key(message.msg_id()) || self.scheduler.contains(message.msg_id()) {
            let evalue = format!("a request with msg_id {} is in flight", message.msg_id());
            return self
                .reject(message, None, ROUTING_ERROR, &evalue, false)
                .await;
        }
        match (routing.engine, routing.balanced) {
            (Some(id), false) => self.apply_direct(id, message).await,
            (None, true) => {
                let constraints = Constraints {
                    targets: routing.targets,
                    retries_left: routing.retries,
                    death_retries_left: routing.retries,
                    deadline: routing
                        .timeout
                        .filter(|t| t.is_finite() && *t >= 0.0)
                        .map(|t| Instant::now() + Duration::from_secs_f64(t.min(1e9))),
                    excluded: Vec::new(),
                    deaths: Vec::new(),
                };
                self.insert_task(new_record(&message, None), &message);
                let queued = Queued {
                    request: message,
                    constraints,
                };
                let needs = Needs::new(routing.after, routing.follow);
                if needs.is_empty() {
                    self.submit_balanced(queued, None).await;
                } else if let Some(evalue) =
                    self.invalid_dependency(queued.request.msg_id(), &needs)
                {
                    self.finish_unsent(queued.request, INVALID_DEPENDENCY, &evalue, "error")
                        .await;
                } else {
                    // Judged with the others in `dispatch`: queued at once if they are met.
                    self.waiting.hold(queued, needs);
                }
                self.dispatch().await;
            }
            _ => {
                let evalue = "apply_request needs metadata {\"engine\": <id>} or \
                              {\"balanced\": true}";
                self.reject(message, None, ROUTING_ERROR, evalue, true)
                    .await;
            }
        }
    }

    /// Why a task with `needs` can never be scheduled, if it names itself or tasks the
    /// controller does not know.
    fn invalid_dependency(&self, msg_id: &str, needs: &Needs) -> Option<String> {
        if needs.ids().any(|id| id == msg_id) {
            return Some("a task cannot depend on itself".into());
        }
        let unknown: BTreeSet<&str> = needs
            .ids()
            .map(String::as_str)
            .filter(|id| !self.knows(id))
            .collect();
        (!unknown.is_empty()).then(|| {
            let listed: Vec<&str> = unknown.iter().take(3).copied().collect();
            let more = unknown.len().saturating_sub(listed.len());
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            format!(
                "it depends on tasks this controller does not know (never submitted, or purged): \
                 {}{more}",
                listed.join(", ")
            )
        })
    }

    /// Whether the controller has seen task `msg_id`: finished, running, queued or waiting.
    fn knows(&self, msg_id: &str) -> bool {
        self.waiting.outcome(msg_id).is_some()
            || self.tasks.contains_key(msg_id)
            || self.scheduler.contains(msg_id)
            || self.waiting.contains(msg_id)
    }

    /// Queues a load-balanced task whose dependencies are met, on the engines it must follow
    /// (`places`) when it has to, or fails it if no engine it may run on is alive.
    async fn submit_balanced(&mut self, mut queued: Queued, places: Option<Vec<EngineId>>) {
        if let Some(places) = places {
            let targets = match queued.constraints.targets.take() {
                Some(targets) => targets.into_iter().filter(|t| places.contains(t)).collect(),
                None => places,
            };
            if targets.is_empty() {
                let evalue = "its dependency cannot be met: the engines it must follow are not \
                              among its targets";
                return self
                    .finish_unsent(queued.request, IMPOSSIBLE_DEPENDENCY, evalue, "error")
                    .await;
            }
            queued.constraints.targets = Some(targets);
        }
        if runs_nowhere(&self.registry, &queued.constraints) {
            return self.fail_unrunnable_task(queued).await;
        }
        self.scheduler.submit(queued);
    }

    /// Moves the tasks whose dependencies have just been met to the queue, and fails those
    /// whose dependencies never can be (which may settle more).
    async fn release_waiting(&mut self) {
        loop {
            let settled = self.waiting.settle();
            if settled.is_empty() {
                return;
            }
            for (queued, verdict) in settled {
                match verdict {
                    Ok(places) => self.submit_balanced(queued, places).await,
                    Err(evalue) => {
                        self.finish_unsent(queued.request, IMPOSSIBLE_DEPENDENCY, &evalue, "error")
                            .await
                    }
                }
            }
        }
    }

    async fn apply_direct(&mut self, id: EngineId, message: Message) {
        if let Some(problem) = self.unavailable(id).or_else(|| self.no_support(id)) {
            return self
                .reject(message, Some(id), ENGINE_ERROR, &problem, true)
                .await;
        }
        self.insert_task(new_record(&message, Some(id)), &message);
        self.scheduler.sent(id);
        self.send_to_engine(id, message, None).await;
    }

    /// Why engine `id` cannot run apply requests, if it cannot.
    fn no_support(&self, id: EngineId) -> Option<String> {
        let engine = self.registry.get(id)?;
        engine.support.is_none().then(|| {
            format!(
                "engine {id} cannot run apply requests: its kernel ({}) has no parallax engine \
                 support (it needs a Python kernel that can import the parallax package; see the \
                 engine's log)",
                engine.info.kernel
            )
        })
    }

    /// Sends the tasks the scheduler can place now; with none left to place, reclaims tasks
    /// waiting on busy engines for idle ones.
    pub(super) async fn dispatch(&mut self) {
        self.release_waiting().await;
        for (id, queued) in self.scheduler.assign() {
            self.db.send(Command::Update {
                msg_id: queued.request.msg_id().to_owned(),
                change: Change::Assigned(id),
            });
            self.send_to_engine(id, queued.request, Some(queued.constraints))
                .await;
        }
        if self.scheduler.unassigned() == 0 {
            self.reclaim().await;
        }
    }

    /// For each idle engine, asks the busiest engine to give back the newest load-balanced task
    /// it holds beyond the one it runs, if the idle engine may run it.
    async fn reclaim(&mut self) {
        let idle = self.scheduler.idle();
        if idle.is_empty() {
            return;
        }
        let pending = self.tasks.values().filter(|t| t.reclaiming).count();
        if pending >= idle.len() {
            return;
        }
        // Per engine: its load-balanced tasks not being reclaimed, newest last.
        let mut held: BTreeMap<EngineId, Vec<(u64, String)>> = BTreeMap::new();
        for (msg_id, task) in &self.tasks {
            if task.balanced.is_some() && !task.reclaiming {
                held.entry(task.engine)
                    .or_default()
                    .push((task.seq, msg_id.clone()));
            }
        }
        let mut wanted = idle.len() - pending;
        while wanted > 0 {
            let Some((&victim, _)) = held
                .iter()
                .filter(|(_, tasks)| tasks.len() >= 2)
                .max_by_key(|(_, tasks)| tasks.len())
            else {
                return;
            };
            let Some(tasks) = held.get_mut(&victim) else {
                return;
            };
            tasks.sort();
            let Some((_, msg_id)) = tasks.pop() else {
                return;
            };
            let takers = self.tasks.get(&msg_id).and_then(|t| t.balanced.as_ref());
            if !takers.is_some_and(|c| idle.iter().any(|&id| self.scheduler.can_take(id, c))) {
                continue;
            }
            let Some(route) = self.registry.get(victim).and_then(|e| e.support.clone()) else {
                held.remove(&victim);
                continue;
            };
            if let Some(task) = self.tasks.get_mut(&msg_id) {
                task.reclaiming = true;
            }
            tracing::debug!(%msg_id, engine = victim, "reclaiming a queued task for an idle engine");
            let mut abort = self
                .session
                .message("abort_request", &json!({ "msg_ids": [msg_id] }));
            abort.identities = route;
            self.to_engine(abort).await;
            wanted -= 1;
        }
    }

    /// An engine gave back a task it was asked to (see [`reclaim`](Self::reclaim)): it goes back
    /// to the front of the queue.
    pub(super) async fn reclaimed(&mut self, id: EngineId, msg_id: &str) {
        let Some(task) = self.tasks.remove(msg_id) else {
            return;
        };
        let Some(constraints) = task.balanced else {
            return;
        };
        self.scheduler.answered(id, None);
        if let Some(engine) = self.registry.get_mut(id) {
            engine.info.queue = engine.info.queue.saturating_sub(1);
            engine.settle_state();
        }
        self.scheduler.resubmit(Queued {
            request: task.request,
            constraints,
        });
        self.dispatch().await;
    }

    /// Engine `id` is gone or restarting its kernel: the tasks its kernel's support ran died
    /// with the kernel (and, when `everything`, so did those the engine process relays).
    /// Each counts the death. Load-balanced tasks with retries left go back to the queue; a task
    /// that has now seen `max_task_deaths` engines die under it fails with
    /// `TaskKilledEngines`; the others fail with `EngineError`, oldest first.
    pub(super) async fn lose_tasks_of(&mut self, id: EngineId, everything: bool) {
        self.scheduler.close(id);
        let mut lost: Vec<(u64, String)> = self
            .tasks
            .iter()
            .filter(|(_, task)| task.engine == id && (everything || task.via_support))
            .map(|(msg_id, task)| (task.seq, msg_id.clone()))
            .collect();
        lost.sort();
        let mut retried = Vec::new();
        for (_, msg_id) in lost {
            let deaths = match self
                .tasks
                .get_mut(&msg_id)
                .and_then(|t| t.balanced.as_mut())
            {
                Some(constraints) => {
                    constraints.deaths.push(id);
                    Some(constraints.deaths.clone())
                }
                None => None,
            };
            if let Some(deaths) = deaths.filter(|d| d.len() as u32 >= self.max_task_deaths) {
                tracing::warn!(%msg_id, engines = ?deaths, "a task killed its engines; not run again");
                self.fail_task_with(&msg_id, TASK_KILLED_ENGINES, &killed_engines(&deaths))
                    .await;
                continue;
            }
            let retry = self
                .tasks
                .get(&msg_id)
                .and_then(|task| task.balanced.as_ref())
                .is_some_and(|c| c.death_retries_left > 0);
            if !retry {
                self.fail_task(&msg_id, died_while_running).await;
                continue;
            }
            let Some(task) = self.tasks.remove(&msg_id) else {
                continue;
            };
            let Some(mut constraints) = task.balanced else {
                continue;
            };
            constraints.death_retries_left -= 1;
            constraints.excluded.push(id);
            tracing::info!(%msg_id, engine = id, "resubmitting a task whose engine died");
            retried.push(Queued {
                request: task.request,
                constraints,
            });
        }
        // Back to the front, in their original order.
        for queued in retried.into_iter().rev() {
            self.scheduler.resubmit(queued);
        }
        if let Some(engine) = self.registry.get_mut(id) {
            engine.info.queue = self.tasks.values().filter(|task| task.engine == id).count() as u64;
        }
        self.fail_unrunnable().await;
        self.dispatch().await;
    }

    /// Fails queued tasks that name engines of which none is alive (or has not died running
    /// them already).
    async fn fail_unrunnable(&mut self) {
        let registry = &self.registry;
        let doomed = self
            .scheduler
            .take_where(|constraints| runs_nowhere(registry, constraints));
        for queued in doomed {
            self.fail_unrunnable_task(queued).await;
        }
    }

    async fn fail_unrunnable_task(&mut self, queued: Queued) {
        let targets = queued.constraints.targets.clone().unwrap_or_default();
        let evalue = format!("no engine this task may run on is alive (targets: {targets:?})");
        self.finish_unsent(queued.request, ENGINE_ERROR, &evalue, "error")
            .await;
    }

    /// Fails queued tasks whose timeout has passed, and tasks whose timeout passed while they
    /// waited for their dependencies.
    pub(super) async fn expire_tasks(&mut self) {
        let now = Instant::now();
        for queued in self.scheduler.expired(now) {
            let evalue = "the task waited for an engine longer than its timeout";
            self.finish_unsent(queued.request, TASK_TIMEOUT, evalue, "error")
                .await;
        }
        for queued in self.waiting.expired(now) {
            let evalue = "the task waited for its dependencies longer than its timeout";
            self.finish_unsent(queued.request, TASK_TIMEOUT, evalue, "error")
                .await;
        }
        self.dispatch().await;
    }

    /// When the next queued or waiting task times out.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        match (self.scheduler.next_deadline(), self.waiting.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Answers (and records) a load-balanced task that never reached an engine.
    async fn finish_unsent(&mut self, request: Message, ename: &str, evalue: &str, status: &str) {
        self.waiting.finished(
            request.msg_id(),
            Outcome {
                ok: false,
                engine: None,
            },
        );
        let mut content = execute_error(ename, evalue);
        content["status"] = json!(status);
        let reply = self
            .session
            .reply(&request, "apply_reply", &content)
            .with_metadata(&json!({"status": status}));
        self.to_client(reply).await;
        let now = now_iso8601();
        let msg_id = request.msg_id().to_owned();
        self.db.send(Command::Update {
            msg_id: msg_id.clone(),
            change: Change::Error(error_fields(&content)),
        });
        self.db.send(Command::Update {
            msg_id,
            change: Change::Finished {
                status: status.to_owned(),
                completed: now.clone(),
                received: now,
            },
        });
    }

    /// `abort_request`: tasks still queued here are answered `aborted` at once; those already
    /// sent to an engine are passed on to its support, which drops them if they have not
    /// started (and answers them `aborted` itself).
    pub(super) async fn on_abort(&mut self, message: &Message) {
        let request = match message.content_as::<AbortRequest>() {
            Ok(request) => request,
            Err(error) => {
                let evalue = format!("invalid abort_request: {error}");
                return self
                    .reply(message, &error_content("ValueError", &evalue))
                    .await;
            }
        };
        let mut aborted = Vec::new();
        let mut forwarded: BTreeMap<EngineId, Vec<String>> = BTreeMap::new();
        for msg_id in request.msg_ids {
            let unsent = self
                .scheduler
                .remove(&msg_id)
                .or_else(|| self.waiting.remove(&msg_id));
            if let Some(queued) = unsent {
                let evalue = "the task was aborted before it started";
                self.finish_unsent(queued.request, TASK_ABORTED, evalue, "aborted")
                    .await;
                aborted.push(msg_id);
            } else if let Some(task) = self.tasks.get(&msg_id) {
                if task.request.msg_type() == "apply_request" {
                    forwarded.entry(task.engine).or_default().push(msg_id);
                }
            }
        }
        let mut passed_on = Vec::new();
        for (id, msg_ids) in forwarded {
            let Some(route) = self.registry.get(id).and_then(|e| e.support.clone()) else {
                continue;
            };
            let mut abort = self
                .session
                .message("abort_request", &json!({ "msg_ids": msg_ids }));
            abort.identities = route;
            self.to_engine(abort).await;
            passed_on.extend(msg_ids);
        }
        let content = json!({"status": "ok", "aborted": aborted, "forwarded": passed_on});
        self.reply(message, &content).await;
    }
}

/// Whether some live engine may run a task (within its targets, not excluded).
pub(super) fn runs_somewhere(registry: &Registry, constraints: &Constraints) -> bool {
    registry
        .iter()
        .filter(|engine| engine.is_live())
        .map(|engine| engine.info.id)
        .any(|id| constraints.allows(id))
}

/// Whether a task names engines of which none is alive (or has not died running it already).
fn runs_nowhere(registry: &Registry, constraints: &Constraints) -> bool {
    constraints.targets.as_ref().is_some_and(|targets| {
        targets.iter().all(|&id| {
            constraints.excluded.contains(&id) || !registry.get(id).is_some_and(|e| e.is_live())
        })
    })
}
