//! A property test of invariant 1: random sequences of reserve, pay (hold), cancel (release),
//! fulfil (commit), expire, restock, count, and redelivery of the last event, applied to one
//! product through the real consumer and use cases, checked after every step against a plain
//! model and against the books (row, ledger, reservations) and the events emitted.

mod support;

use mercato_inventory::domain::{Levels, ReservationStatus, StockChange};
use mercato_kit::contracts::types::*;
use mercato_kit::events::consumer::Outcome;
use mercato_kit::events::Envelope;
use mercato_kit::ids::OrderId;
use mercato_kit::time::now_us;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::collections::HashMap;
use support::*;

const ORDERS: usize = 5;

#[derive(Clone, Debug)]
enum Op {
    Reserve(usize, i64),
    Pay(usize),
    Cancel(usize),
    Fulfil(usize),
    ExpireAll,
    Restock(i64),
    Count(i64),
    Redeliver,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..ORDERS, 1..6i64).prop_map(|(o, q)| Op::Reserve(o, q)),
        2 => (0..ORDERS).prop_map(Op::Pay),
        2 => (0..ORDERS).prop_map(Op::Cancel),
        2 => (0..ORDERS).prop_map(Op::Fulfil),
        1 => Just(Op::ExpireAll),
        1 => (1..8i64).prop_map(Op::Restock),
        1 => (0..15i64).prop_map(Op::Count),
        2 => Just(Op::Redeliver),
    ]
}

/// What the inventory should know, by the rules of ARCHITECTURE.md.
#[derive(Default, Debug)]
struct Model {
    levels: Levels,
    /// Per order: its status and the units it holds.
    orders: HashMap<usize, (ReservationStatus, i64)>,
}

impl Model {
    /// Applies an op; returns the event types it should emit.
    fn apply(&mut self, op: &Op) -> Vec<&'static str> {
        use ReservationStatus::*;
        match *op {
            Op::Reserve(o, q) => {
                if self.orders.contains_key(&o) {
                    return vec![];
                }
                if self.levels.available() >= q {
                    self.levels.reserved += q;
                    self.orders.insert(o, (Active, q));
                    vec![INVENTORY_RESERVED]
                } else {
                    self.orders.insert(o, (Released, 0));
                    vec![INVENTORY_RESERVATION_FAILED]
                }
            }
            Op::Pay(o) => {
                if let Some((s @ Active, _)) = self.orders.get_mut(&o) {
                    *s = Held;
                }
                vec![]
            }
            Op::Cancel(o) => match self.orders.get_mut(&o) {
                Some((s @ (Active | Held), q)) => {
                    *s = Released;
                    self.levels.reserved -= *q;
                    vec![INVENTORY_RELEASED]
                }
                Some(_) => vec![],
                None => {
                    self.orders.insert(o, (Released, 0));
                    vec![]
                }
            },
            Op::Fulfil(o) => match self.orders.get_mut(&o) {
                Some((s @ (Active | Held), q)) => {
                    *s = Committed;
                    self.levels.reserved -= *q;
                    self.levels.on_hand -= *q;
                    vec![INVENTORY_COMMITTED]
                }
                _ => vec![],
            },
            Op::ExpireAll => {
                let mut out = vec![];
                for (s, q) in self.orders.values_mut() {
                    if *s == Active {
                        *s = Released;
                        self.levels.reserved -= *q;
                        out.push(INVENTORY_RELEASED);
                    }
                }
                out
            }
            Op::Restock(n) => {
                self.levels.on_hand += n;
                vec![]
            }
            Op::Count(n) => {
                if n >= self.levels.reserved {
                    self.levels.on_hand = n;
                }
                vec![]
            }
            Op::Redeliver => vec![],
        }
    }
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let w = World::new().await;
    let p = w.product(8).await;
    let orders: Vec<OrderId> = (0..ORDERS).map(|_| OrderId::new()).collect();
    let mut model = Model {
        levels: Levels {
            on_hand: 8,
            reserved: 0,
        },
        ..Default::default()
    };
    let mut last: Option<Envelope> = None;
    let mut seen = w.outbox().await.len();
    for op in &ops {
        let want_events = model.apply(op);
        let event = match *op {
            Op::Reserve(o, q) => Some(order_created(orders[o], &[(p, q)])),
            Op::Pay(o) => Some(order_ref(ORDER_PAID, orders[o])),
            Op::Cancel(o) => Some(order_cancelled(orders[o])),
            Op::Fulfil(o) => Some(order_ref(ORDER_FULFILLED, orders[o])),
            _ => None,
        };
        match (op, event) {
            (_, Some(env)) => {
                prop_assert_eq!(w.deliver(&env).await, Outcome::Applied);
                last = Some(env);
            }
            (Op::ExpireAll, None) => {
                w.inv.sweep(now_us() + 7_200_000_000).await.unwrap();
            }
            (Op::Restock(n), None) => w.set_stock(p, StockChange::Restock(*n)).await,
            (Op::Count(n), None) => {
                let mut tx = w.db.begin().await.unwrap();
                let edit = mercato_inventory::service::StockEdit {
                    product_id: p,
                    change: StockChange::Set(*n),
                    note: None,
                    seller: None,
                };
                let r = w
                    .inv
                    .change_stock(
                        &mut tx,
                        &edit,
                        now_us(),
                        &mercato_inventory::service::Origin::system("model"),
                    )
                    .await;
                prop_assert_eq!(r.is_ok(), *n >= model.levels.reserved);
                if r.is_ok() {
                    tx.commit().await.unwrap();
                }
            }
            (Op::Redeliver, None) => {
                if let Some(env) = &last {
                    let before = w.snapshot().await;
                    prop_assert_eq!(w.deliver(env).await, Outcome::Duplicate);
                    prop_assert_eq!(w.snapshot().await, before);
                }
            }
            _ => unreachable!(),
        }

        // The row agrees with the model, and with its ledger and its reservations.
        let levels = w.levels(p).await;
        prop_assert_eq!(levels, model.levels, "after {:?}", op);
        prop_assert!(levels.available() >= 0);
        for a in mercato_inventory::store::audit(w.db.reader())
            .await
            .unwrap()
        {
            prop_assert!(a.holds(), "books disagree after {:?}: {:?}", op, a);
        }
        for (i, o) in orders.iter().enumerate() {
            let got = w.reservation(*o).await.map(|r| r.status);
            prop_assert_eq!(
                got,
                model.orders.get(&i).map(|(s, _)| *s),
                "order {} after {:?}",
                i,
                op
            );
        }
        // Exactly the events the step should emit, no more.
        let outbox = w.outbox().await;
        let mut new: Vec<&str> = outbox[seen..]
            .iter()
            .map(|e| e.event_type.as_str())
            .collect();
        let mut want = want_events;
        new.sort();
        want.sort();
        prop_assert_eq!(new, want, "events of {:?}", op);
        seen = outbox.len();
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn invariant_one_holds_after_every_step(ops in proptest::collection::vec(op(), 1..30)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops))?;
    }
}

#[test]
fn the_model_itself_conserves_stock() {
    let mut m = Model {
        levels: Levels {
            on_hand: 8,
            reserved: 0,
        },
        ..Default::default()
    };
    m.apply(&Op::Reserve(0, 5));
    m.apply(&Op::Reserve(1, 5));
    m.apply(&Op::Pay(0));
    m.apply(&Op::ExpireAll);
    m.apply(&Op::Fulfil(0));
    assert_eq!(
        m.levels,
        Levels {
            on_hand: 3,
            reserved: 0
        }
    );
}
