//! Choosing a pod for a new connection. Pure: it sees a snapshot of every
//! pod's load and health and returns the order in which to try them, so that
//! failover (trying the next pod when a dial fails) needs no second pass.

use rand::Rng;

/// How much the balancer trusts that a pod can take a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Reporting normally.
    Healthy,
    /// No report yet, or the last one is older than `cacheTTL`: usable, with
    /// the balancer's own counts as the only load signal.
    Unknown,
    /// Failed too many polls or dials in a row; tried only when no other pod
    /// is left, so that a cluster-wide blip does not refuse every client.
    Ejected,
}

/// One pod as selection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodLoad {
    /// Effective load: the pod's last reported count adjusted by what this
    /// balancer opened and saw close since that report.
    pub load: u64,
    /// Health as above.
    pub health: Health,
    /// False when the pod reports `drain` or `maint`: it is never chosen.
    pub accepting: bool,
}

/// The order in which to try pods for one connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ranking {
    /// Indexes into the input slice, best first.
    pub order: Vec<usize>,
    /// How many entries at the front of `order` are healthy or unknown; the
    /// rest are ejected pods kept as a last resort.
    pub usable: usize,
}

/// Ranks pods by effective load, least loaded first, usable pods before
/// ejected ones. Ties are broken at random so that several balancer replicas
/// reading the same reports do not all pick the same pod.
pub fn rank(pods: &[PodLoad], rng: &mut impl Rng) -> Ranking {
    let mut keyed: Vec<(bool, u64, u32, usize)> = pods
        .iter()
        .enumerate()
        .filter(|(_, p)| p.accepting)
        .map(|(i, p)| (p.health == Health::Ejected, p.load, rng.random::<u32>(), i))
        .collect();
    keyed.sort_unstable();
    let usable = keyed.iter().filter(|(ejected, ..)| !ejected).count();
    Ranking {
        order: keyed.into_iter().map(|(.., i)| i).collect(),
        usable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn pod(load: u64) -> PodLoad {
        PodLoad {
            load,
            health: Health::Healthy,
            accepting: true,
        }
    }

    #[test]
    fn least_loaded_first() {
        let mut rng = StdRng::seed_from_u64(1);
        let r = rank(&[pod(5), pod(0), pod(2)], &mut rng);
        assert_eq!(r.order, vec![1, 2, 0]);
        assert_eq!(r.usable, 3);
    }

    #[test]
    fn ties_are_broken_at_random() {
        let mut rng = StdRng::seed_from_u64(7);
        let pods = [pod(3), pod(3), pod(3), pod(9)];
        let mut firsts = [0u32; 4];
        for _ in 0..3000 {
            firsts[rank(&pods, &mut rng).order[0]] += 1;
        }
        assert_eq!(firsts[3], 0);
        for count in &firsts[..3] {
            assert!((800..1200).contains(count), "{firsts:?}");
        }
    }

    #[test]
    fn ejected_pods_come_last_and_draining_never() {
        let mut rng = StdRng::seed_from_u64(3);
        let pods = [
            PodLoad {
                health: Health::Ejected,
                ..pod(0)
            },
            PodLoad {
                accepting: false,
                ..pod(0)
            },
            PodLoad {
                health: Health::Unknown,
                ..pod(10)
            },
        ];
        let r = rank(&pods, &mut rng);
        assert_eq!(r.order, vec![2, 0]);
        assert_eq!(r.usable, 1);
    }
}
