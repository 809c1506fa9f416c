//! The position in the newest-first list of orders.

use super::Order;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use mercato_kit::ids::OrderId;

/// A position in the newest-first list: the last order of a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: i64,
    pub id: OrderId,
}

impl Cursor {
    pub fn of(order: &Order) -> Cursor {
        Cursor {
            created_at: order.created_at,
            id: order.id,
        }
    }

    pub fn encode(self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}", self.created_at, self.id))
    }

    pub fn decode(s: &str) -> Result<Cursor, String> {
        let bad = || "is not a cursor from this list".to_owned();
        let raw = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
        let text = String::from_utf8(raw).map_err(|_| bad())?;
        let (at, id) = text.split_once(':').ok_or_else(bad)?;
        Ok(Cursor {
            created_at: at.parse().map_err(|_| bad())?,
            id: id.parse().map_err(|_| bad())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let c = Cursor {
            created_at: 1_700_000_000_000_000,
            id: OrderId::new(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Ok(c));
        for bad in ["", "x", "!!!", &URL_SAFE_NO_PAD.encode("12:not-a-uuid")] {
            assert!(Cursor::decode(bad).is_err(), "{bad}");
        }
    }
}
