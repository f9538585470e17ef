//! A client sending at a steady pace: how close to a rolling window's limit it can go
//! unrefused depends on the window's segments (a segment counts until a window after its
//! last admission, so up to one segment's worth of requests that already left the window
//! still counts), and no pace gets more than the limit into any window.

use std::time::Duration;

use tollgate_limits::{Bucket, Limit, ManualClock, MemoryStore, Quota};

/// The times (µs from the start) at which a client sending `per_window` requests per
/// window, evenly spaced, for `windows` windows, was admitted, and how many it was refused.
fn steady(limit: Limit, per_window: u32, windows: u32) -> (Vec<u64>, u32) {
    let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
    let store = MemoryStore::builder().clock(clock.clone()).build();
    let bucket = Bucket::new("api", "client", limit);
    let gap = limit.quota().period() / per_window;
    let (mut admitted, mut refused) = (Vec::new(), 0);
    for i in 0..per_window * windows {
        if store.charge(std::slice::from_ref(&bucket)).unwrap().allowed {
            admitted.push(u64::try_from((gap * i).as_micros()).unwrap());
        } else {
            refused += 1;
        }
        clock.advance(gap);
    }
    (admitted, refused)
}

/// The most admissions in any interval of `window` (a window ending at each admission).
fn most_in_any_window(admitted: &[u64], window: Duration) -> usize {
    let window = u64::try_from(window.as_micros()).unwrap();
    admitted
        .iter()
        .enumerate()
        .map(|(end, &t)| end + 1 - admitted.partition_point(|&a| a + window <= t))
        .max()
        .unwrap_or(0)
}

#[test]
fn sixty_segments_admit_a_client_one_under_the_limit() {
    let limit = Limit::sliding_segments(Quota::per_minute(60), 60).unwrap();
    let (admitted, refused) = steady(limit, 59, 5);
    assert_eq!(refused, 0);
    assert_eq!(admitted.len(), 59 * 5);
}

#[test]
fn the_default_ten_segments_refuse_a_steady_client_above_about_91_percent() {
    let limit = Limit::sliding(Quota::per_minute(60));
    assert_eq!(steady(limit, 54, 5).1, 0, "90% of the limit");
    assert!(steady(limit, 57, 5).1 > 0, "95% of the limit");
}

#[test]
fn no_pace_gets_more_than_the_limit_into_any_window() {
    for segments in [10, 60] {
        let limit = Limit::sliding_segments(Quota::per_minute(60), segments).unwrap();
        for pace in [59, 60, 61, 90, 120, 600] {
            let (admitted, _) = steady(limit, pace, 5);
            let most = most_in_any_window(&admitted, Duration::from_secs(60));
            assert!(
                most <= 60,
                "{segments} segments, {pace}/min: {most} in one window"
            );
        }
    }
}
