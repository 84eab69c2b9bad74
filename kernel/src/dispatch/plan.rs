//! Cells with parallel magics: a [`Plan`] of steps run in order as one request.
//!
//! The cell's `busy`, its one `execute_input` and its `execute_reply` come from here. The cell
//! takes its execution count and history entry from the local kernel by sending it a commented
//! copy of itself with `store_history` at the start (so a cell that fails early still counts, as
//! in IPython). The count is known in advance (the local kernel runs requests in order), so a
//! cell never waits for its history step: an ipykernel takes milliseconds per request, more than
//! a whole `%px` round trip. History steps are queued and sent before anything else goes to the
//! local kernel, or [`HISTORY_DELAY`] after the first was queued; they finish unseen (*detached*).
//! For an IPython kernel, one silent cell records all queued cells in its history and advances
//! its count; another kernel gets one commented copy of each cell with `store_history`.
//! Local steps go to the local kernel without `store_history` (it runs requests in order, after
//! the history step), parallel steps go to the engines through the controller, and the other
//! steps (`%pxconfig`, `%autopx`, `%pxresult`, `%cluster`) are served here. The first step that
//! fails ends the cell with its error.

use std::collections::VecDeque;
use std::time::Duration;

use parallax_client::{ControllerClient, ExecuteOptions};
use parallax_magics::{
    aborted_notice, autopx_notice, execution_notice, has_parallel_magic, interrupt_notice,
    parse_cell, pending_result, progress, ClusterCommand, Emit, ErrorContent, GroupBy, MagicError,
    ParallelStep, Plan, Step, NO_LAST_RESULT,
};
use parallax_wire::cluster::EngineState;
use parallax_wire::profile::Profile;
use parallax_wire::Message;
use serde_json::{json, Value};
use tokio::time::Instant;

use parallax_wire::replies::error_content;

use super::{Active, ExecuteContent, Job, Kernel, LocalJob, LocalState};
use crate::px::{self, PxRun};

/// How long the history entries of magic cells may wait before they are sent to the local
/// kernel (when nothing else is sent to it first).
pub(super) const HISTORY_DELAY: Duration = Duration::from_millis(200);

/// How long a request to the controller may take before the cluster counts as gone.
const CONTROLLER_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a running parallel step checks that the controller still answers.
const WATCHDOG: Duration = Duration::from_secs(3);

/// The rest of a cell's plan.
pub(super) struct PlanState {
    steps: VecDeque<Step>,
    silent: bool,
    /// The cell's execution count, as its `execute_input` announced it.
    count: u64,
    /// The cell's error, once a step failed.
    error: Option<Value>,
    /// An error to end the cell with once its steps have run: a magic that did not parse (its
    /// UsageError line is already shown; the cell still takes its count, as in IPython).
    deferred_error: Option<Value>,
    /// A `--local` parallel step's run, shown grouped once the local copy of its cell has run.
    after_local: Option<PxRun>,
    /// When the running parallel step last checked on the controller.
    checked: Instant,
}

/// How a step went.
enum Outcome {
    /// Finished; go on.
    Done,
    /// Running: a local or parallel job will say when it is done.
    Waiting,
    /// Failed: the cell ends with this error content.
    Failed(Value),
}

fn failed(ename: &str, evalue: &str) -> Outcome {
    Outcome::Failed(error_content(ename, evalue))
}

fn failed_with(error: &ErrorContent) -> Outcome {
    Outcome::Failed(json!({
        "status": "error",
        "ename": error.ename,
        "evalue": error.evalue,
        "traceback": error.traceback,
    }))
}

impl Kernel {
    /// The plan of an execute request that uses parallel magics (or any cell in `%autopx` mode);
    /// `None` for a cell the local kernel runs as it is.
    pub(super) fn plan_for(&self, request: &Message) -> Option<Result<Plan, MagicError>> {
        let content: ExecuteContent = request.content_as().ok()?;
        if !self.px.autopx && !has_parallel_magic(&content.code) {
            return None;
        }
        Some(parse_cell(&content.code, &self.px))
    }

    /// Starts serving a cell with parallel magics.
    pub(super) async fn start_plan(&mut self, request: Message, plan: Result<Plan, MagicError>) {
        let content: ExecuteContent = request.content_as().unwrap_or_default();
        let store_history = content.store_history && !content.silent;
        let count = self.execution_count + u64::from(store_history);
        if !content.silent {
            let input = json!({ "code": content.code, "execution_count": count });
            self.front
                .publish_new(&request, "execute_input", &input)
                .await;
        }
        let mut deferred_error = None;
        let steps: VecDeque<Step> = match plan {
            Ok(plan) => plan.steps.into(),
            Err(error) => {
                // As IPython shows a bad magic: a UsageError line on stderr, no traceback.
                self.emit(&request, &px::stderr(error.stderr_text())).await;
                deferred_error = Some(json!({
                    "status": "error",
                    "ename": error.ename(),
                    "evalue": error.to_string(),
                    "traceback": [],
                }));
                VecDeque::new()
            }
        };
        if store_history {
            let mut kept = request.clone();
            kept.buffers.clear();
            self.pending_history.push((kept, content.code.clone()));
            self.history_due
                .get_or_insert_with(|| Instant::now() + HISTORY_DELAY);
        }
        self.active = Some(Active {
            request,
            job: Job::Between,
            plan: Some(PlanState {
                steps,
                silent: content.silent,
                count,
                error: None,
                deferred_error,
                after_local: None,
                checked: Instant::now(),
            }),
            last_activity: Instant::now(),
        });
        self.run_plan().await;
    }

    /// Runs steps until one has to wait, or the plan is over (then answers the cell).
    pub(super) async fn run_plan(&mut self) {
        loop {
            let Some(active) = &mut self.active else {
                return;
            };
            let Some(plan) = &mut active.plan else {
                return;
            };
            active.job = Job::Between;
            let next = if plan.error.is_some() {
                None
            } else {
                plan.steps.pop_front()
            };
            let Some(step) = next else {
                self.execution_count = self.execution_count.max(plan.count);
                if plan.error.is_none() {
                    plan.error = plan.deferred_error.take();
                }
                self.reply_plan().await;
                return;
            };
            match self.run_step(step).await {
                Outcome::Done => {}
                Outcome::Waiting => return,
                Outcome::Failed(content) => self.fail_plan(content).await,
            }
        }
    }

    /// Records the cell's error and publishes it as the cell's `error` output.
    async fn fail_plan(&mut self, content: Value) {
        let Some(active) = &mut self.active else {
            return;
        };
        if let Some(plan) = &mut active.plan {
            plan.error = Some(content.clone());
        }
        let request = active.request.clone();
        self.publish_error(&request, &content).await;
    }

    /// Answers the cell and finishes it.
    async fn reply_plan(&mut self) {
        let Some(active) = self.active.take() else {
            return;
        };
        let error = active.plan.and_then(|p| p.error);
        let content = match error {
            Some(mut content) => {
                if let Some(map) = content.as_object_mut() {
                    map.insert("status".into(), json!("error"));
                }
                content
            }
            None => json!({"status": "ok", "user_expressions": {}, "payload": []}),
        };
        self.reply(&self.front.shell, &active.request, &content)
            .await;
        self.finish(&active.request).await;
    }

    async fn run_step(&mut self, step: Step) -> Outcome {
        match step {
            Step::Local(code) => self.start_local_step(code).await,
            Step::Parallel(step) => self.start_parallel(step).await,
            Step::Config(change) => {
                self.px.apply(&change);
                Outcome::Done
            }
            Step::Autopx => {
                self.px.autopx = !self.px.autopx;
                self.emit_active(&autopx_notice(self.px.autopx)).await;
                Outcome::Done
            }
            Step::Result(options) => self.show_last_result(options.group_outputs).await,
            Step::Cluster(command) => self.cluster_command(command).await,
        }
    }

    async fn start_local_step(&mut self, code: String) -> Outcome {
        self.send_history().await;
        let Some(active) = &mut self.active else {
            return Outcome::Done;
        };
        let Some(plan) = &mut active.plan else {
            return Outcome::Done;
        };
        let silent = plan.silent;
        let request = active.request.clone();
        let LocalState::Ready(local) = &self.local else {
            return failed(
                "LocalKernelUnavailable",
                "the local kernel is not running; it is being started again",
            );
        };
        let mut content: Value = request.content_as().unwrap_or_else(|_| json!({}));
        content["code"] = json!(code);
        content["store_history"] = json!(false);
        content["silent"] = json!(silent);
        let bytes = parallax_wire::to_json_bytes(&content);
        let Some(local_msg_id) = Self::send_local(local, &request, bytes).await else {
            return failed(
                "LocalKernelUnavailable",
                "the local kernel's link is closed",
            );
        };
        self.routes.insert(local_msg_id.clone(), &request);
        if let Some(active) = &mut self.active {
            active.job = Job::Local(LocalJob {
                local_msg_id,
                expects_reply: true,
                reply: None,
                idle: false,
                input_seen: false,
            });
            active.last_activity = Instant::now();
        }
        Outcome::Waiting
    }

    /// Sends the commented copy of the cell that takes its count and history entry; it runs
    /// while the plan goes on.
    /// Sends the queued history steps to the local kernel (see the module doc); they run
    /// detached.
    pub(super) async fn send_history(&mut self) {
        self.history_due = None;
        if self.pending_history.is_empty() {
            return;
        }
        let LocalState::Ready(local) = &self.local else {
            return;
        };
        let cells = std::mem::take(&mut self.pending_history);
        let ipython = local.info.get("implementation").and_then(Value::as_str) == Some("ipython");
        let steps: Vec<(Message, Value)> = if ipython {
            let sources: Vec<&str> = cells.iter().map(|(_, code)| code.as_str()).collect();
            let code = format!(
                "(lambda ip, cells: [(ip.history_manager.store_inputs(ip.execution_count, c, c), \
                 setattr(ip, 'execution_count', ip.execution_count + 1)) for c in cells])\
                 (get_ipython(), {})",
                json!(sources)
            );
            let content = json!({"code": code, "silent": true, "store_history": false,
                                 "user_expressions": {}, "allow_stdin": false,
                                 "stop_on_error": false});
            vec![(cells[cells.len() - 1].0.clone(), content)]
        } else {
            cells
                .into_iter()
                .map(|(request, code)| {
                    let commented: Vec<String> = code.lines().map(|l| format!("# {l}")).collect();
                    let mut content: Value = request.content_as().unwrap_or_else(|_| json!({}));
                    content["code"] = json!(commented.join("\n"));
                    content["store_history"] = json!(true);
                    content["silent"] = json!(false);
                    (request, content)
                })
                .collect()
        };
        for (request, content) in steps {
            let bytes = parallax_wire::to_json_bytes(&content);
            let Some(local_msg_id) = Self::send_local(local, &request, bytes).await else {
                return;
            };
            self.detached.push(LocalJob {
                local_msg_id,
                expects_reply: true,
                reply: None,
                idle: false,
                input_seen: false,
            });
        }
    }

    /// A local step has replied and gone idle: carry on with the plan.
    pub(super) async fn local_step_done(&mut self) {
        let Some(active) = &mut self.active else {
            return;
        };
        let Job::Local(job) = std::mem::replace(&mut active.job, Job::Between) else {
            return;
        };
        let reply: Value = job
            .reply
            .as_ref()
            .and_then(|r| r.content_as().ok())
            .unwrap_or(Value::Null);
        if reply["status"] == "error" {
            // The local kernel published the error output itself.
            if let Some(plan) = &mut active.plan {
                plan.error = Some(json!({
                    "status": "error",
                    "ename": reply["ename"],
                    "evalue": reply["evalue"],
                    "traceback": reply["traceback"],
                }));
            }
        }
        // A `--local` step's engines, shown once the local copy has run.
        if let Some(run) = active.plan.as_mut().and_then(|p| p.after_local.take()) {
            let group = Some(run.options.group_outputs);
            active.job = Job::Parallel { run, group };
            if self.parallel_done() {
                if let Outcome::Failed(content) = self.finish_parallel().await {
                    self.fail_plan(content).await;
                }
            } else {
                return;
            }
        }
        self.run_plan().await;
    }

    /// The controller of our profile, connecting on first use.
    async fn client(&mut self) -> Result<&ControllerClient, String> {
        if self.cluster.is_none() {
            let profile = Profile::named(&self.profile).map_err(|e| e.to_string())?;
            match ControllerClient::connect(&profile, CONTROLLER_TIMEOUT).await {
                Ok(client) => self.cluster = Some(client),
                Err(parallax_client::ClientError::NoCluster { profile }) => {
                    return Err(format!(
                        "no cluster is running for profile {profile:?}: start one with \
                         `%cluster start -n 2` (or `parallax cluster start --profile {profile}`)"
                    ));
                }
                Err(error) => return Err(error.to_string()),
            }
        }
        self.cluster
            .as_ref()
            .ok_or_else(|| "no connection to the controller".to_owned())
    }

    async fn start_parallel(&mut self, step: ParallelStep) -> Outcome {
        let Some(request) = self.active.as_ref().map(|a| a.request.clone()) else {
            return Outcome::Done;
        };
        let engine_tx = self.engine_tx.clone();
        let client = match self.client().await {
            Ok(client) => client,
            Err(message) => return failed("NoClusterError", &message),
        };
        let engines = match client.engines().await {
            Ok(engines) => engines,
            Err(error) => {
                self.cluster = None;
                return failed("ControllerError", &error.to_string());
            }
        };
        let live: Vec<u32> = engines
            .iter()
            .filter(|e| e.state != EngineState::Dead)
            .map(|e| e.id)
            .collect();
        let targets = match step.options.targets.resolve(&live) {
            Ok(targets) => targets,
            Err(error) => return failed(error.ename(), &error.to_string()),
        };
        let options = ExecuteOptions {
            silent: false,
            store_history: true,
            stop_on_error: false,
        };
        let mut run = PxRun::new(step.options.clone(), targets.clone(), request.msg_id());
        let mut msg_ids = Vec::new();
        for &engine in &targets {
            match client
                .submit(engine, &step.code, &options, engine_tx.clone())
                .await
            {
                Ok(msg_id) => {
                    msg_ids.push(msg_id.clone());
                    run.sent(msg_id, engine);
                }
                Err(error) => return failed("ControllerError", &error.to_string()),
            }
        }
        if let Some(name) = &step.options.out {
            // After the engines' run (and the local copy of a --local cell), the local kernel
            // gets the same requests as an AsyncResult. The parser took only a Python name.
            let code = format!(
                "import parallax._kernel as _parallax_kernel\n\
                 {name} = _parallax_kernel.result({}, {})\n\
                 del _parallax_kernel",
                json!(self.profile),
                json!(msg_ids)
            );
            if let Some(plan) = self.active.as_mut().and_then(|a| a.plan.as_mut()) {
                plan.steps.push_front(Step::Local(code));
            }
        }
        if step.options.verbose {
            let notice = execution_notice(step.options.block, &step.options.targets, &targets);
            self.emit(&request, &notice).await;
        }
        if step.options.local {
            // As ipyparallel: the engines run while the cell runs here too; the local output
            // comes first, then the engines' output, grouped.
            if let Some(plan) = self.active.as_mut().and_then(|a| a.plan.as_mut()) {
                plan.steps.push_front(Step::Local(step.code.clone()));
                if step.options.block {
                    plan.after_local = Some(run);
                    return Outcome::Done;
                }
            }
        }
        if !step.options.block {
            self.last_async = Some(run);
            self.emit(&request, &pending_result()).await;
            return Outcome::Done;
        }
        if let Some(active) = &mut self.active {
            active.job = Job::Parallel { run, group: None };
            if let Some(plan) = &mut active.plan {
                plan.checked = Instant::now();
            }
        }
        Outcome::Waiting
    }

    /// `%pxresult`: the last non-blocking run, grouped, once it is done.
    async fn show_last_result(&mut self, group: GroupBy) -> Outcome {
        let Some(run) = self.last_async.take() else {
            return failed("UsageError", NO_LAST_RESULT);
        };
        if let Some(active) = &mut self.active {
            active.job = Job::Parallel {
                run,
                group: Some(group),
            };
        }
        if self.parallel_done() {
            return self.finish_parallel().await;
        }
        Outcome::Waiting
    }

    fn parallel_done(&self) -> bool {
        matches!(&self.active, Some(Active { job: Job::Parallel { run, .. }, .. }) if run.done())
    }

    /// A message from the cluster: to the running step, or to the last non-blocking run.
    pub(super) async fn on_engine_message(&mut self, message: Message) {
        let mut emits = Vec::new();
        let mut owned = false;
        if let Some(Active {
            job: Job::Parallel { run, group },
            ..
        }) = &mut self.active
        {
            if run.owns(&message) {
                owned = true;
                let shown = run.on_message(&message);
                if group.is_none() {
                    emits = shown;
                }
                if message.msg_type() == "execute_reply" {
                    if let Some(id) = run.progress.clone() {
                        let (done, total) = run.progress_counts();
                        emits.push(progress(&id, done, total, true));
                    }
                }
            }
        }
        if !owned {
            let waiting = self
                .active
                .as_mut()
                .and_then(|a| a.plan.as_mut())
                .and_then(|p| p.after_local.as_mut());
            for run in waiting.into_iter().chain(self.last_async.as_mut()) {
                if run.owns(&message) {
                    run.on_message(&message);
                    break;
                }
            }
            return;
        }
        for emit in &emits {
            self.emit_active(emit).await;
        }
        if self.parallel_done() {
            if let Outcome::Failed(content) = self.finish_parallel().await {
                self.fail_plan(content).await;
            }
            self.run_plan().await;
        }
    }

    /// The running parallel step is done: shows what is left to show and says how it went.
    async fn finish_parallel(&mut self) -> Outcome {
        let Some(active) = &mut self.active else {
            return Outcome::Done;
        };
        let Job::Parallel { run, group } = std::mem::replace(&mut active.job, Job::Between) else {
            return Outcome::Done;
        };
        let (mut emits, error) = run.finish(group);
        if let Some(id) = &run.progress {
            emits.insert(
                0,
                Emit::UpdateDisplayData {
                    data: serde_json::Map::from_iter([("text/plain".into(), json!(""))]),
                    metadata: serde_json::Map::new(),
                    display_id: id.clone(),
                },
            );
        }
        for (engine, reason) in run.aborted() {
            emits.push(aborted_notice(*engine, reason));
        }
        for emit in &emits {
            self.emit_active(emit).await;
        }
        match error {
            Some(error) => failed_with(&error),
            None => Outcome::Done,
        }
    }

    /// When the running parallel step next needs attention: its progress line, or a check that
    /// the controller still answers.
    pub(super) fn px_timer(&self) -> Option<Instant> {
        let active = self.active.as_ref()?;
        let Job::Parallel { run, .. } = &active.job else {
            return None;
        };
        let check = active.plan.as_ref().map(|p| p.checked + WATCHDOG);
        let after = run.options.progress_after;
        let show = (run.progress.is_none() && after >= 0.0)
            .then(|| run.started + Duration::from_secs_f64(after));
        match (check, show) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(super) async fn on_px_timer(&mut self) {
        let now = Instant::now();
        let Some(active) = &mut self.active else {
            return;
        };
        let Job::Parallel { run, group } = &mut active.job else {
            return;
        };
        let after = run.options.progress_after;
        if run.progress.is_none()
            && after >= 0.0
            && now >= run.started + Duration::from_secs_f64(after)
            && group.is_none()
        {
            let id = run.progress_id();
            run.progress = Some(id.clone());
            let (done, total) = run.progress_counts();
            let emit = progress(&id, done, total, false);
            self.emit_active(&emit).await;
            return;
        }
        let Some(plan) = &mut active.plan else {
            return;
        };
        if now < plan.checked + WATCHDOG {
            // The progress line was already shown (or is disabled): nothing else is due.
            if run.progress.is_some() || after < 0.0 {
                plan.checked = now;
            }
            return;
        }
        plan.checked = now;
        let alive = match &self.cluster {
            Some(client) => client.engines().await.is_ok(),
            None => false,
        };
        if !alive {
            self.cluster = None;
            let content = error_content(
                "ControllerError",
                &format!(
                    "the controller of profile {:?} stopped answering while this cell ran",
                    self.profile
                ),
            );
            if let Some(active) = &mut self.active {
                active.job = Job::Between;
            }
            self.fail_plan(content).await;
            self.run_plan().await;
        }
    }

    /// Interrupts the engines of the running parallel step; false if none is running.
    pub(super) async fn interrupt_engines(&mut self) -> bool {
        let Some(Active {
            job: Job::Parallel { run, .. },
            ..
        }) = &self.active
        else {
            return false;
        };
        let engines = run.engines.clone();
        let signal = &run.options.signal_on_interrupt;
        let signal_name = signal
            .name()
            .map_or_else(|| signal.number().to_string(), str::to_owned);
        let notice = interrupt_notice(signal);
        self.emit_active(&notice).await;
        if let Some(client) = &self.cluster {
            tracing::info!(?engines, signal = %signal_name, "interrupting the engines");
            match client.interrupt(Some(engines), Some(signal_name)).await {
                Ok(interrupted) => tracing::info!(?interrupted, "the controller interrupted"),
                Err(error) => tracing::warn!(%error, "could not interrupt the engines"),
            }
        }
        true
    }

    async fn cluster_command(&mut self, command: ClusterCommand) -> Outcome {
        let profile = match Profile::named(&self.profile) {
            Ok(profile) => profile,
            Err(error) => return failed("ClusterError", &error.to_string()),
        };
        let text = match command {
            ClusterCommand::Start { engines, keep } => {
                let exe = match std::env::current_exe() {
                    Ok(exe) => exe,
                    Err(error) => return failed("ClusterError", &error.to_string()),
                };
                // The profile's cluster.toml says what to start; -n overrides it.
                let flags = parallax_launcher::config::Settings {
                    n: engines.map(|n| n as usize),
                    ..Default::default()
                };
                let options = match parallax_launcher::config::resolve(profile, exe, flags) {
                    Ok(options) => options,
                    Err(error) => return failed("ClusterError", &error.to_string()),
                };
                self.cluster = None;
                match parallax_launcher::start_daemon(&options).await {
                    Ok(engines) => {
                        let ids: Vec<String> = engines.iter().map(|e| e.id.to_string()).collect();
                        let lifetime = if keep {
                            crate::owned::forget(&options.profile);
                            format!(
                                "It keeps running after this kernel shuts down: %cluster stop or \
                                 `parallax cluster stop --profile {}` stops it.",
                                self.profile
                            )
                        } else {
                            match crate::owned::record(&options.profile, &self.connection_file) {
                                Ok(()) => "It stops when this kernel shuts down (a restart keeps \
                                           it); %cluster start --keep leaves it running."
                                    .to_owned(),
                                Err(error) => format!(
                                    "It keeps running after this kernel shuts down \
                                     (cannot record that this kernel started it: {error})."
                                ),
                            }
                        };
                        let (noun, id) = if ids.len() == 1 {
                            ("engine", "id")
                        } else {
                            ("engines", "ids")
                        };
                        format!(
                            "Cluster {:?} ready: {} {noun} ({id} {})\n{lifetime}\n",
                            self.profile,
                            ids.len(),
                            ids.join(", ")
                        )
                    }
                    Err(error) => return failed("ClusterError", &error.to_string()),
                }
            }
            ClusterCommand::Stop => {
                self.cluster = None;
                self.last_async = None;
                crate::owned::forget(&profile);
                match parallax_launcher::stop(&profile, Duration::from_secs(5)).await {
                    Ok(_) => format!("Stopped cluster {:?}\n", self.profile),
                    Err(error) => return failed("ClusterError", &error.to_string()),
                }
            }
            ClusterCommand::Status => match self.client().await {
                Ok(client) => match client.engines().await {
                    Ok(engines) => {
                        let live: Vec<String> = engines
                            .iter()
                            .filter(|e| e.state != EngineState::Dead)
                            .map(|e| format!("{} ({:?})", e.id, e.state).to_lowercase())
                            .collect();
                        let noun = if live.len() == 1 { "engine" } else { "engines" };
                        format!(
                            "Cluster {:?}: running, {} {noun}: {}\n",
                            self.profile,
                            live.len(),
                            live.join(", ")
                        )
                    }
                    Err(error) => return failed("ControllerError", &error.to_string()),
                },
                Err(_) => format!("No cluster is running for profile {:?}\n", self.profile),
            },
        };
        self.emit_active(&px::stdout(text)).await;
        Outcome::Done
    }

    /// Publishes an emit as output of `request`.
    async fn emit(&self, request: &Message, emit: &Emit) {
        let count = self
            .active
            .as_ref()
            .and_then(|a| a.plan.as_ref())
            .map_or(self.execution_count, |p| p.count);
        let (msg_type, content) = px::emit_message(emit, count);
        self.front.publish_new(request, msg_type, &content).await;
    }

    /// Publishes an emit as output of the active request.
    async fn emit_active(&self, emit: &Emit) {
        if let Some(active) = &self.active {
            self.emit(&active.request, emit).await;
        }
    }
}
