//! The engine table: which engines exist, their ids, states and routes.
//!
//! Pure bookkeeping, no I/O: the hub asks it which id a registering engine gets, who sent a
//! message, and which engines have missed their heartbeats; the hub does the talking.
//!
//! Id rules:
//! - a fresh engine gets the lowest id never assigned in this controller's life (0, 1, 2, …);
//!   the ids of dead engines stay taken, so an id always names one engine at a time;
//! - an engine asking for `id: Some(n)` gets `n` back unless `n` is held by a live engine with
//!   another uuid; else it gets a fresh id;
//! - an engine registering again under the same uuid (after its kernel restarted, or having
//!   forgotten its id) gets the id that uuid already holds, unless another live uuid has taken it.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parallax_wire::cluster::{EngineId, EngineInfo, EngineState, RegisterRequest};

/// One engine, as the hub tracks it.
#[derive(Debug)]
pub(crate) struct Engine {
    pub info: EngineInfo,
    /// The ROUTER identities that reach the engine.
    pub route: Vec<Bytes>,
    /// The identities that reach the engine support inside its kernel (`apply_request`s go
    /// there), once it has attached.
    pub support: Option<Vec<Bytes>>,
    /// When its last heartbeat (or registration) arrived.
    pub last_seen: Instant,
    /// When its row was last written to the task database.
    pub last_written: Option<Instant>,
    /// When its last reply arrived: the request queued behind that one began then.
    pub last_reply: Option<Instant>,
}

impl Engine {
    /// Idle, busy or restarting: the engine process is there.
    pub fn is_live(&self) -> bool {
        self.info.state != EngineState::Dead
    }

    /// Idle or busy: the engine can take requests.
    pub fn is_serving(&self) -> bool {
        matches!(self.info.state, EngineState::Idle | EngineState::Busy)
    }

    /// Sets the state implied by the queue (busy while requests are outstanding).
    pub fn settle_state(&mut self) {
        if self.is_serving() {
            self.info.state = if self.info.queue > 0 {
                EngineState::Busy
            } else {
                EngineState::Idle
            };
        }
    }
}

/// All engines of this controller's life, dead ones included.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    engines: BTreeMap<EngineId, Engine>,
    by_route: HashMap<Vec<Bytes>, EngineId>,
    by_support: HashMap<Vec<Bytes>, EngineId>,
}

impl Registry {
    /// The id an engine registering with `request` gets.
    pub fn choose_id(&self, request: &RegisterRequest) -> EngineId {
        let free_for_us = |id: EngineId| match self.engines.get(&id) {
            None => true,
            Some(engine) => !engine.is_live() || engine.info.uuid == request.uuid,
        };
        if let Some(wanted) = request.id.filter(|&id| free_for_us(id)) {
            return wanted;
        }
        // The newest id this uuid held, if nobody else holds it now.
        let own = self
            .engines
            .iter()
            .rev()
            .find(|(_, engine)| engine.info.uuid == request.uuid)
            .map(|(&id, _)| id);
        if let Some(id) = own.filter(|&id| free_for_us(id)) {
            return id;
        }
        self.lowest_unassigned()
    }

    fn lowest_unassigned(&self) -> EngineId {
        let mut candidate: EngineId = 0;
        for &id in self.engines.keys() {
            if id != candidate {
                break;
            }
            candidate = candidate.saturating_add(1);
        }
        candidate
    }

    /// Records a registration under `id` (from [`choose_id`](Self::choose_id)) and returns the
    /// engine. An engine coming back under the same uuid keeps its queue (the requests it
    /// accepted are its own to answer) and its count of tasks done.
    pub fn register(
        &mut self,
        id: EngineId,
        request: &RegisterRequest,
        route: Vec<Bytes>,
        now: Instant,
        date: String,
    ) -> &mut Engine {
        let (queue, tasks_done) = match self.engines.get(&id) {
            Some(old) if old.info.uuid == request.uuid => (old.info.queue, old.info.tasks_done),
            // A dead engine's slot, taken over: its requests were failed when it died.
            _ => (0, 0),
        };
        if let Some(old) = self.engines.get(&id) {
            if self.by_route.get(&old.route) == Some(&id) {
                self.by_route.remove(&old.route);
            }
            if let Some(support) = &old.support {
                if self.by_support.get(support) == Some(&id) {
                    self.by_support.remove(support);
                }
            }
        }
        // A slot the same route held before is left behind: the hub has declared it dead.
        self.by_route.insert(route.clone(), id);
        let mut engine = Engine {
            info: EngineInfo {
                id,
                uuid: request.uuid.clone(),
                host: request.host.clone(),
                pid: request.pid,
                kernel: request.kernel.clone(),
                kernel_pid: request.kernel_pid,
                state: EngineState::Idle,
                registered: date.clone(),
                last_heartbeat: date,
                tasks_done,
                queue,
                running: None,
            },
            route,
            support: None,
            last_seen: now,
            last_written: None,
            last_reply: None,
        };
        engine.settle_state();
        match self.engines.entry(id) {
            Entry::Occupied(mut slot) => {
                slot.insert(engine);
                slot.into_mut()
            }
            Entry::Vacant(slot) => slot.insert(engine),
        }
    }

    /// The engine reached by `route` (its engine process or its kernel's support), if it is
    /// registered.
    pub fn id_of(&self, route: &[Bytes]) -> Option<EngineId> {
        self.by_route
            .get(route)
            .or_else(|| self.by_support.get(route))
            .copied()
    }

    /// The live engine registered under `uuid`, if any.
    pub fn by_uuid(&self, uuid: &str) -> Option<EngineId> {
        self.engines
            .values()
            .rev()
            .find(|e| e.info.uuid == uuid && e.is_live())
            .map(|e| e.info.id)
    }

    /// Engine `id`'s support is reached by `route` from now on (`None`: it has none).
    pub fn set_support(&mut self, id: EngineId, route: Option<Vec<Bytes>>) {
        let Some(engine) = self.engines.get_mut(&id) else {
            return;
        };
        if let Some(old) = engine.support.take() {
            if self.by_support.get(&old) == Some(&id) {
                self.by_support.remove(&old);
            }
        }
        if let Some(route) = &route {
            self.by_support.insert(route.clone(), id);
        }
        engine.support = route;
    }

    pub fn get(&self, id: EngineId) -> Option<&Engine> {
        self.engines.get(&id)
    }

    pub fn get_mut(&mut self, id: EngineId) -> Option<&mut Engine> {
        self.engines.get_mut(&id)
    }

    /// Every engine, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Engine> {
        self.engines.values()
    }

    /// Live engines whose last heartbeat is older than `timeout`.
    pub fn silent_since(&self, now: Instant, timeout: Duration) -> Vec<EngineId> {
        self.engines
            .values()
            .filter(|e| e.is_live() && now.saturating_duration_since(e.last_seen) > timeout)
            .map(|e| e.info.id)
            .collect()
    }

    /// The ids in use, for error messages ("engines: 0, 1").
    pub fn describe_ids(&self) -> String {
        let live: Vec<String> = self
            .engines
            .values()
            .filter(|e| e.is_live())
            .map(|e| e.info.id.to_string())
            .collect();
        if live.is_empty() {
            "no engines are registered".to_owned()
        } else {
            format!("engines: {}", live.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uuid: &str, id: Option<EngineId>) -> RegisterRequest {
        RegisterRequest {
            uuid: uuid.into(),
            host: "h".into(),
            pid: 1,
            kernel: "python3".into(),
            kernel_pid: 2,
            id,
        }
    }

    fn register(registry: &mut Registry, uuid: &str, id: Option<EngineId>) -> EngineId {
        let request = request(uuid, id);
        let chosen = registry.choose_id(&request);
        let route = vec![Bytes::from(uuid.to_owned())];
        registry.register(chosen, &request, route, Instant::now(), "d".into());
        chosen
    }

    #[test]
    fn fresh_engines_count_up() {
        let mut registry = Registry::default();
        assert_eq!(register(&mut registry, "a", None), 0);
        assert_eq!(register(&mut registry, "b", None), 1);
        assert_eq!(register(&mut registry, "c", None), 2);
        assert_eq!(registry.describe_ids(), "engines: 0, 1, 2");
    }

    #[test]
    fn reclaiming_respects_live_holders() {
        let mut registry = Registry::default();
        register(&mut registry, "a", None);
        register(&mut registry, "b", None);
        // Held by a live engine of another uuid: a fresh id instead.
        assert_eq!(register(&mut registry, "c", Some(0)), 2);
        // The same uuid gets its own id back, in any state.
        registry.get_mut(1).expect("1").info.state = EngineState::Restarting;
        assert_eq!(register(&mut registry, "b", Some(1)), 1);
        assert_eq!(registry.get(1).expect("1").info.state, EngineState::Idle);
        // A dead engine's id can be taken by anyone who asks for it...
        registry.get_mut(0).expect("0").info.state = EngineState::Dead;
        assert_eq!(register(&mut registry, "d", Some(0)), 0);
        // ...but is never handed to a fresh engine.
        registry.get_mut(0).expect("0").info.state = EngineState::Dead;
        assert_eq!(register(&mut registry, "e", None), 3);
        // An unknown id that was never assigned is granted as asked.
        assert_eq!(register(&mut registry, "f", Some(7)), 7);
        assert_eq!(register(&mut registry, "g", None), 4);
    }

    #[test]
    fn a_known_uuid_without_an_id_gets_its_own_back() {
        let mut registry = Registry::default();
        register(&mut registry, "a", None);
        register(&mut registry, "b", None);
        assert_eq!(register(&mut registry, "b", None), 1);
        assert_eq!(registry.id_of(&[Bytes::from_static(b"b")]), Some(1));
    }

    #[test]
    fn an_engine_moving_to_another_id_keeps_its_route() {
        let mut registry = Registry::default();
        register(&mut registry, "a", None);
        assert_eq!(register(&mut registry, "a", Some(5)), 5);
        registry.get_mut(0).expect("0").info.state = EngineState::Dead;
        // Someone else takes the old slot: "a" is still reached as engine 5.
        assert_eq!(register(&mut registry, "b", Some(0)), 0);
        assert_eq!(registry.id_of(&[Bytes::from_static(b"a")]), Some(5));
        assert_eq!(registry.id_of(&[Bytes::from_static(b"b")]), Some(0));
    }

    #[test]
    fn silence_is_detected() {
        let mut registry = Registry::default();
        register(&mut registry, "a", None);
        let later = Instant::now() + Duration::from_secs(3);
        assert_eq!(
            registry.silent_since(later, Duration::from_secs(2)),
            vec![0]
        );
        registry.get_mut(0).expect("0").info.state = EngineState::Dead;
        assert!(registry
            .silent_since(later, Duration::from_secs(2))
            .is_empty());
    }
}
