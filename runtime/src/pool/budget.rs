//! Budget accounting: which connection an acquisition takes, decided under the pool's
//! lock from what is idle and how many connections the server has open. Pure: it
//! reads descriptions of the idle connections and answers with an index, so it is
//! tested without PostgreSQL.

use std::time::Instant;

use super::{BindingKey, Login};

/// What the planner needs to know of one idle connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct Idle<'a> {
    pub login: &'a Login,
    /// Bound to this key at this epoch, and clean (no request's SQL ran on it since
    /// it was bound): usable with no statement at all.
    pub bound_to: Option<(&'a BindingKey, u64)>,
    /// How much this tenant prefers this connection (rendezvous hashing of the tenant
    /// and the connection, see [`affinity`]): a tenant's requests go to the
    /// connections it ranks highest among those idle, so each backend serves a
    /// stable share of the tenants and keeps their prepared statements, plans and
    /// catalog entries, instead of every backend serving every tenant.
    pub affinity: u64,
    /// Bound to this key but not usable as it is (a request's own SQL or a write ran
    /// on it): one rebinding statement makes it so. What a tenant database's connection
    /// can be rebound from.
    pub same_key: bool,
    pub idle_since: Instant,
}

/// What an acquisition does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Choice {
    /// Take idle connection `i`, bound to the tenant already.
    Bound(usize),
    /// Take idle connection `i` and rebind it.
    Rebind(usize),
    /// Open a new connection (a slot is free).
    Open,
    /// The budget is full: close idle connection `i` (of another login or database)
    /// to make room, and wait for its slot.
    MakeRoom(usize),
    /// Nothing can be done now: wait for a release.
    Wait,
}

/// The request: who it is for, and where the server's budget stands.
#[derive(Debug, Clone, Copy)]
pub(super) struct Want<'a> {
    pub login: &'a Login,
    pub key: &'a BindingKey,
    /// The key's invalidation epoch now: a binding made at another epoch is void.
    pub epoch: u64,
    /// Connections the key holds now, and the most it may hold.
    pub in_use: u32,
    pub cap: Option<u32>,
    /// Connections open to the server now, and its budget.
    pub open: u32,
    pub budget: u32,
    /// Connections of the login being cleaned off the request path: each is back in
    /// a round trip.
    pub cleaning: u32,
}

/// Chooses a connection for `want` among `idle`:
///
/// 1. an idle connection bound to this incarnation (the most recently used);
/// 2. else the idle connection of the same login that the tenant ranks highest (see
///    [`Idle::affinity`]; for a tenant database, whose connections serve that tenant
///    only: one of this tenant's that needs rebinding);
/// 3. else a new connection, if the server's budget has a free slot;
/// 4. else (budget full), if a connection of the login is being cleaned, wait for it;
/// 5. else (budget full) the least recently used idle connection of another login on
///    the server, or a tenant database's connection bound to another tenant, is
///    closed to make room.
pub(super) fn choose<'a>(idle: impl IntoIterator<Item = Idle<'a>>, want: Want<'_>) -> Choice {
    if want.cap.is_some_and(|cap| want.in_use >= cap) {
        return Choice::Wait;
    }
    let own_database = want.login.database.is_some();
    let mut bound: Option<(usize, Instant)> = None;
    let mut preferred: Option<(usize, u64)> = None;
    let mut same_server: Option<(usize, Instant)> = None;
    let mut own_login_oldest: Option<(usize, Instant)> = None;
    let mut same_key: Option<usize> = None;
    for (i, c) in idle.into_iter().enumerate() {
        if c.login == want.login {
            if own_login_oldest.is_none_or(|(_, t)| t > c.idle_since) {
                own_login_oldest = Some((i, c.idle_since));
            }
            if c.bound_to == Some((want.key, want.epoch)) {
                if bound.is_none_or(|(_, t)| t < c.idle_since) {
                    bound = Some((i, c.idle_since));
                }
            } else if own_database {
                if same_key.is_none() && c.same_key {
                    same_key = Some(i);
                }
            } else if preferred.is_none_or(|(_, a)| a < c.affinity) {
                preferred = Some((i, c.affinity));
            }
        } else if c.login.server == want.login.server
            && same_server.is_none_or(|(_, t)| t > c.idle_since)
        {
            same_server = Some((i, c.idle_since));
        }
    }
    if let Some((i, _)) = bound {
        return Choice::Bound(i);
    }
    if let Some(i) = preferred.map(|(i, _)| i).or(same_key) {
        return Choice::Rebind(i);
    }
    if want.open < want.budget {
        return Choice::Open;
    }
    if want.cleaning > 0 {
        return Choice::Wait;
    }
    match same_server.or(own_login_oldest) {
        Some((i, _)) => Choice::MakeRoom(i),
        None => Choice::Wait,
    }
}

/// The rendezvous score of a tenant (`tenant`: a hash of its id) for a connection
/// (`serial`): a stable pseudo-random ranking of the connections per tenant, which
/// moves only the tenants of a connection that closes.
pub(super) fn affinity(tenant: u64, serial: u64) -> u64 {
    // splitmix64's finaliser over the pair.
    let mut z = tenant ^ serial.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn login(database: Option<&str>) -> Login {
        Login {
            server: "default".to_owned(),
            database: database.map(str::to_owned),
            user: None,
        }
    }

    fn key(id: &str) -> BindingKey {
        BindingKey {
            id: id.parse().unwrap(),
            incarnation: 1,
        }
    }

    fn want<'a>(login: &'a Login, key: &'a BindingKey, open: u32, budget: u32) -> Want<'a> {
        Want {
            login,
            key,
            epoch: 0,
            in_use: 0,
            cap: None,
            open,
            budget,
            cleaning: 0,
        }
    }

    #[test]
    fn a_connection_bound_to_the_tenant_wins_and_the_freshest_of_them() {
        let shared = login(None);
        let (a, b) = (key("a"), key("b"));
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(5);
        let idle = [
            Idle {
                login: &shared,
                bound_to: Some((&b, 0)),
                affinity: 0,
                same_key: false,
                idle_since: t0,
            },
            Idle {
                login: &shared,
                bound_to: Some((&a, 0)),
                affinity: 1,
                same_key: false,
                idle_since: t0,
            },
            Idle {
                login: &shared,
                bound_to: Some((&a, 0)),
                affinity: 1,
                same_key: false,
                idle_since: t1,
            },
        ];
        assert_eq!(choose(idle, want(&shared, &a, 3, 3)), Choice::Bound(2));
    }

    #[test]
    fn a_binding_of_an_older_epoch_is_not_reused_but_rebound() {
        let shared = login(None);
        let a = key("a");
        let idle = [Idle {
            login: &shared,
            bound_to: Some((&a, 0)),
            affinity: 1,
            same_key: false,
            idle_since: Instant::now(),
        }];
        let mut w = want(&shared, &a, 1, 1);
        w.epoch = 1;
        assert_eq!(choose(idle, w), Choice::Rebind(0));
    }

    #[test]
    fn the_connection_the_tenant_ranks_highest_is_taken() {
        let shared = login(None);
        let (a, b, c) = (key("a"), key("b"), key("c"));
        let t0 = Instant::now();
        let idle = [
            Idle {
                login: &shared,
                bound_to: Some((&b, 0)),
                affinity: 0,
                same_key: false,
                idle_since: t0,
            },
            Idle {
                login: &shared,
                bound_to: Some((&c, 0)),
                affinity: 1,
                same_key: false,
                idle_since: t0 + Duration::from_millis(1),
            },
        ];
        assert_eq!(choose(idle, want(&shared, &a, 2, 2)), Choice::Rebind(1));
        let other = [
            idle[0],
            Idle {
                affinity: 0,
                ..idle[1]
            },
            Idle {
                affinity: 7,
                ..idle[0]
            },
        ];
        assert_eq!(choose(other, want(&shared, &a, 2, 2)), Choice::Rebind(2));
    }

    #[test]
    fn affinity_spreads_tenants_over_connections_and_is_stable() {
        // 1,000 tenants over 25 connections: each connection is the first choice of
        // a fair share, and a tenant's ranking does not change between calls.
        let serials: Vec<u64> = (100..125).collect();
        let mut firsts = vec![0u32; serials.len()];
        for t in 0..1000u64 {
            let h = t.wrapping_mul(0x2545_F491_4F6C_DD1D);
            let best = |s: &[u64]| (0..s.len()).max_by_key(|&i| affinity(h, s[i])).unwrap();
            let i = best(&serials);
            assert_eq!(i, best(&serials));
            firsts[i] += 1;
            // Closing another connection does not move the tenant.
            let j = (i + 1) % serials.len();
            let fewer: Vec<u64> = serials
                .iter()
                .copied()
                .filter(|&x| x != serials[j])
                .collect();
            assert_eq!(fewer[best(&fewer)], serials[i]);
        }
        assert!(
            firsts.iter().all(|&n| (15..=70).contains(&n)),
            "first choices per connection: {firsts:?}"
        );
    }

    #[test]
    fn a_free_slot_opens_and_a_full_budget_closes_another_login_or_waits() {
        let shared = login(None);
        let tenant_db = login(Some("t_a"));
        let a = key("a");
        assert_eq!(choose([], want(&shared, &a, 1, 2)), Choice::Open);
        assert_eq!(choose([], want(&shared, &a, 2, 2)), Choice::Wait);
        let idle = [Idle {
            login: &tenant_db,
            bound_to: Some((&a, 0)),
            affinity: 1,
            same_key: false,
            idle_since: Instant::now(),
        }];
        assert_eq!(choose(idle, want(&shared, &a, 2, 2)), Choice::MakeRoom(0));
    }

    #[test]
    fn a_tenant_database_connection_is_never_rebound_to_another_tenant() {
        let db = login(Some("t_shared_name"));
        let (a, b) = (key("a"), key("b"));
        let idle = [Idle {
            login: &db,
            bound_to: Some((&b, 0)),
            affinity: 0,
            same_key: false,
            idle_since: Instant::now(),
        }];
        assert_eq!(choose(idle, want(&db, &a, 1, 2)), Choice::Open);
        assert_eq!(choose(idle, want(&db, &a, 2, 2)), Choice::MakeRoom(0));
    }

    #[test]
    fn a_tenant_database_connection_that_needs_rebinding_is_rebound_not_closed() {
        let db = login(Some("t_a"));
        let a = key("a");
        let idle = [Idle {
            login: &db,
            bound_to: None,
            affinity: 1,
            same_key: true,
            idle_since: Instant::now(),
        }];
        assert_eq!(choose(idle, want(&db, &a, 2, 2)), Choice::Rebind(0));
    }

    #[test]
    fn a_full_budget_waits_for_a_connection_of_the_login_being_cleaned() {
        let (dba, dbb) = (login(Some("t_a")), login(Some("t_b")));
        let (a, b) = (key("a"), key("b"));
        let idle = [Idle {
            login: &dbb,
            bound_to: Some((&b, 0)),
            affinity: 0,
            same_key: true,
            idle_since: Instant::now(),
        }];
        let mut w = want(&dba, &a, 2, 2);
        assert_eq!(choose(idle, w), Choice::MakeRoom(0));
        w.cleaning = 1;
        assert_eq!(choose(idle, w), Choice::Wait);
        // A free slot still opens: nothing is closed for it.
        w.open = 1;
        assert_eq!(choose(idle, w), Choice::Open);
    }

    #[test]
    fn a_tenant_at_its_cap_waits_even_with_idle_connections() {
        let shared = login(None);
        let a = key("a");
        let idle = [Idle {
            login: &shared,
            bound_to: Some((&a, 0)),
            affinity: 1,
            same_key: false,
            idle_since: Instant::now(),
        }];
        let mut w = want(&shared, &a, 1, 4);
        w.in_use = 2;
        w.cap = Some(2);
        assert_eq!(choose(idle, w), Choice::Wait);
    }
}
