//! Conflict-free replicated data types as the walkthrough's clients use them, and its client.
//!
//! - [`lww`]: last-writer-wins register (`lww:` keys).
//! - [`gcounter`]: grow-only counter (`counter:` keys).
//! - [`state`]: the merged view of every key, and how an incoming value changes it.
//! - [`client`]: `ferry crdt-client` — subscribes to notifications, reads values, merges.
//!
//! Each datacenter writes to its own namespace on its own primary; a replica follows both; a
//! client merges what it reads from the replica. Because merge is commutative, associative and
//! idempotent, every client ends in the same state whatever order it sees the writes in.

pub mod client;
pub mod gcounter;
pub mod lww;
pub mod state;

#[cfg(test)]
mod tests {
    use super::gcounter::GCounter;
    use super::lww::LwwRegister;
    use super::state::{Outcome, State};

    /// xorshift64*, seeded: reproducible random orders without an extra crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn shuffle<T>(&mut self, v: &mut [T]) {
            for i in (1..v.len()).rev() {
                v.swap(i, (self.next() % (i as u64 + 1)) as usize);
            }
        }
    }

    /// Random (key, value) writes: registers with colliding timestamps and replicas, counter
    /// writes that go up and (stale) down, and some malformed values.
    fn random_writes(rng: &mut Rng, n: usize) -> Vec<(String, Vec<u8>)> {
        (0..n)
            .map(|_| {
                let replica = format!("dc{}", rng.next() % 3);
                match rng.next() % 5 {
                    0..=1 => (
                        format!("lww:k{}", rng.next() % 4),
                        serde_json::json!({"value": rng.next() % 100, "timestamp": rng.next() % 8, "replica": replica})
                            .to_string()
                            .into_bytes(),
                    ),
                    2..=3 => (
                        format!("counter:c{}", rng.next() % 3),
                        serde_json::json!({"replica": replica, "count": rng.next() % 50}).to_string().into_bytes(),
                    ),
                    _ => (format!("lww:k{}", rng.next() % 4), b"{not json".to_vec()),
                }
            })
            .collect()
    }

    #[test]
    fn every_delivery_order_converges_to_the_same_state() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        for round in 0..200 {
            let writes = random_writes(&mut rng, 30);
            let mut reference = State::default();
            for (k, v) in &writes {
                reference.apply(k, v);
            }
            for _ in 0..5 {
                let mut order = writes.clone();
                rng.shuffle(&mut order);
                // Duplicates too: a write seen at bootstrap and again live.
                let dup = order[..5].to_vec();
                order.extend(dup);
                let mut s = State::default();
                for (k, v) in &order {
                    s.apply(k, v);
                }
                assert_eq!(s, reference, "round {round}: order changed the result");
            }
        }
    }

    #[test]
    fn merge_is_commutative_associative_and_idempotent() {
        let mut rng = Rng(0x00dd_ba11_cafe);
        for _ in 0..200 {
            let parts: Vec<State> = (0..3)
                .map(|_| {
                    let mut s = State::default();
                    for (k, v) in random_writes(&mut rng, 10) {
                        s.apply(&k, &v);
                    }
                    s
                })
                .collect();
            let (a, b, c) = (&parts[0], &parts[1], &parts[2]);
            let merged = |x: &State, y: &State| {
                let mut m = x.clone();
                m.merge(y);
                m
            };
            assert_eq!(merged(a, b), merged(b, a), "commutative");
            assert_eq!(
                merged(&merged(a, b), c),
                merged(a, &merged(b, c)),
                "associative"
            );
            assert_eq!(merged(a, a), *a, "idempotent");
        }
    }

    #[test]
    fn the_walkthroughs_rules() {
        let mut s = State::default();
        let lww = |v: &str, ts: i64, r: &str| {
            serde_json::json!({"value": v, "timestamp": ts, "replica": r})
                .to_string()
                .into_bytes()
        };
        // Newer timestamp wins.
        s.apply(
            "lww:user-status",
            &lww("online", 1698765432000, "ad-campaign-dc1"),
        );
        s.apply(
            "lww:user-status",
            &lww("away", 1698765433000, "ad-campaign-dc2"),
        );
        assert_eq!(s.lww["lww:user-status"].value, "away");
        // Equal timestamps: the larger replica id wins, in either order.
        for order in [
            ["ad-campaign-dc1", "ad-campaign-dc2"],
            ["ad-campaign-dc2", "ad-campaign-dc1"],
        ] {
            let mut t = State::default();
            for r in order {
                t.apply(
                    "lww:config",
                    &lww(
                        if r.ends_with('1') {
                            "DC1 wins?"
                        } else {
                            "DC2 wins!"
                        },
                        5,
                        r,
                    ),
                );
            }
            assert_eq!(t.lww["lww:config"].value, "DC2 wins!");
        }
        // An older write is ignored and reported as stale.
        s.apply(
            "lww:feature-flag",
            br#"{"value":true,"timestamp":2000,"replica":"ad-campaign-dc1"}"#,
        );
        let out = s.apply(
            "lww:feature-flag",
            br#"{"value":false,"timestamp":1000,"replica":"ad-campaign-dc2"}"#,
        );
        assert!(matches!(out, Outcome::LwwStale { .. }), "{out:?}");
        assert_eq!(s.lww["lww:feature-flag"].value, true);
        // G-counter: per-replica max, sum.
        s.apply(
            "counter:page-views",
            br#"{"replica":"ad-campaign-dc1","count":5}"#,
        );
        s.apply(
            "counter:page-views",
            br#"{"replica":"ad-campaign-dc2","count":3}"#,
        );
        s.apply(
            "counter:page-views",
            br#"{"replica":"ad-campaign-dc1","count":4}"#,
        );
        assert_eq!(s.counters["counter:page-views"].value(), 8);
        // Malformed values and other keys leave the state alone.
        let before = s.clone();
        assert!(matches!(s.apply("lww:x", b"[1,2"), Outcome::Malformed(_)));
        assert!(matches!(
            s.apply("counter:x", br#"{"replica":"a","count":-1}"#),
            Outcome::Malformed(_)
        ));
        assert_eq!(s.apply("plain-key", b"v"), Outcome::NotCrdt);
        assert_eq!(s, before);
        let mut g = GCounter::default();
        assert!(g.merge_count("a", 1) && !g.merge_count("a", 1));
        let r = LwwRegister {
            value: serde_json::json!(1),
            timestamp: 1,
            replica: "a".into(),
        };
        assert!(!r.clone().merge(&r));
    }
}
