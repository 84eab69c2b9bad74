//! An engine run by `mpiexec` (`parallax engine --mpi`): its id is its MPI rank, read from the
//! variables each MPI sets in its ranks' environment. No I/O: the caller passes the lookup.

use parallax_wire::cluster::EngineId;

use super::EngineError;

/// The variables that hold a rank, in the order they are read: Open MPI's, PMIx's (Open MPI
/// 5, PRRTE, Slurm with PMIx), PMI's (MPICH's Hydra, Intel MPI, Slurm with PMI-2).
pub const RANK_VARS: [&str; 3] = ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"];

/// The rank of this process, from the first of [`RANK_VARS`] that is set.
pub fn mpi_rank(var: impl Fn(&str) -> Option<String>) -> Result<EngineId, EngineError> {
    let Some((name, value)) = RANK_VARS
        .iter()
        .find_map(|name| var(name).map(|value| (*name, value)))
    else {
        return Err(EngineError::MpiRank {
            reason: format!(
                "none of {} is set: run it under mpiexec (parallax cluster start --engines mpi)",
                RANK_VARS.join(", ")
            ),
        });
    };
    value.trim().parse().map_err(|_| EngineError::MpiRank {
        reason: format!("{name}={value:?} is not a rank"),
    })
}

/// How long rank `rank` waits before it starts (and so before it registers): ranks from 100 on
/// spread out their registrations (20 ms apart, as ipyparallel does), so that a large job does
/// not reach the controller all at once.
pub fn registration_delay(rank: EngineId) -> std::time::Duration {
    if rank < 100 {
        std::time::Duration::ZERO
    } else {
        std::time::Duration::from_millis(20 * u64::from(rank))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    /// Variables set, and the rank or (part of) the error.
    type Case<'a> = (&'a [(&'a str, &'a str)], Result<EngineId, &'a str>);

    #[test]
    fn the_rank_comes_from_whichever_mpi_set_it() {
        let cases: [Case; 7] = [
            (&[("PMI_RANK", "3"), ("PMI_SIZE", "4")], Ok(3)),
            (&[("OMPI_COMM_WORLD_RANK", "2"), ("PMIX_RANK", "2")], Ok(2)),
            (&[("PMIX_RANK", "0")], Ok(0)),
            (&[("OMPI_COMM_WORLD_RANK", "1"), ("PMI_RANK", "7")], Ok(1)),
            (
                &[],
                Err("none of OMPI_COMM_WORLD_RANK, PMIX_RANK, PMI_RANK is set"),
            ),
            (&[("PMI_RANK", "-1")], Err("PMI_RANK=\"-1\" is not a rank")),
            (&[("PMIX_RANK", "x")], Err("PMIX_RANK=\"x\" is not a rank")),
        ];
        for (vars, expected) in cases {
            match (mpi_rank(lookup(vars)), expected) {
                (Ok(rank), Ok(want)) => assert_eq!(rank, want, "{vars:?}"),
                (Err(error), Err(want)) => {
                    assert!(error.to_string().contains(want), "{vars:?}: {error}")
                }
                (got, want) => panic!("{vars:?}: got {got:?}, expected {want:?}"),
            }
        }
    }

    #[test]
    fn only_ranks_from_100_wait() {
        assert_eq!(registration_delay(99), std::time::Duration::ZERO);
        assert_eq!(registration_delay(100), std::time::Duration::from_secs(2));
    }
}
