//! Redis Cluster hash slots, as the `redis` crate computes them: CRC16 (XMODEM) of the key,
//! or of its hash tag, modulo 16384.

use redis::cluster_routing::Slot;

/// The hash slot of `key`.
pub(crate) fn slot(key: &str) -> Slot {
    Slot::for_key(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(n: u16) -> Slot {
        Slot::new(n).unwrap()
    }

    #[test]
    fn known_slots() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot("123456789"), at(0x31C3)); // CRC16/XMODEM check value
        assert_eq!(slot("foo"), at(12182));
        assert_eq!(slot("bar"), at(5061));
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("{user1000}.following"), slot("user1000"));
        // An empty tag is no tag: the whole key is hashed.
        assert_ne!(slot("foo{}{bar}"), slot("bar"));
        assert_eq!(slot("foo{{bar}}zap"), slot("{bar"));
        // The prefix's hash tag puts every key of a store on one slot.
        assert_eq!(slot("{tollgate}:a:1"), slot("{tollgate}:b:2"));
    }
}
