//! Reloading a limiter's rules from its configuration file while it serves:
//! [`ConfigWatcher`] polls the file and calls
//! [`Limiter::reload_config_with`] when its content changes.
//!
//! A reload replaces the rules ([`Limiter::reload`] says which, and what happens to the
//! counts); a file that does not load or build is logged (`tracing::error!`, target
//! `tollgate`) and the running rules stay until the next edit, as they do when the code
//! given to the watcher ([`WatchBuilder::adjust`], [`WatchBuilder::customize`]) panics
//! ([`ConfigError::Panicked`]). A watcher polls (every
//! 500 ms by default) on a thread of its own, so it needs no async runtime and no
//! file-system notification support; it reads the whole file each time and reloads when
//! its bytes changed (an editor's write-and-rename, a touch without a change, a Kubernetes
//! ConfigMap's symlink swap are all seen for what they are).
//!
//! Three guards against a file caught mid-edit: a change is loaded once two polls in a row
//! read the same bytes (a write that finishes within one poll interval is not loaded
//! half-written); a change that may be the file loaded before caught mid-write (it drops a
//! route; its last route says less than before, a setting missing, a value cut short or
//! whose budget it is changed, or is a new one a broader route's path covers; or it
//! changes a global limit or a bucket) is loaded only once [`DROP_READS`] polls in a row
//! read it the same (5 s at the default interval; warned of when first seen), so a writer
//! that stalls for a second or two does not lift the limits it had not written yet; and a
//! file that
//! declares no routes, global limits or buckets, where the one running did, is refused
//! ([`ConfigError::NoLimits`]: an emptied or truncated file would otherwise lift every
//! limit at once). [`ConfigWatcher::reload_now`] loads what the file holds at once, except
//! a change the second guard waits for, which it leaves to the watcher
//! ([`ConfigError::Unsettled`]). Write
//! the file elsewhere and rename it over the watched one, and no reader sees it
//! half-written.
//!
//! ```no_run
//! use std::time::Duration;
//! use tollgate::config::KeyText;
//! use tollgate::reload::ConfigWatcher;
//! use tollgate::{Key, Limiter, Policy};
//!
//! # fn main() -> Result<(), tollgate::config::ConfigError> {
//! // What code adds to the file's rules, at build and at every reload.
//! let daily = |rules: tollgate::LimiterBuilder| {
//!     rules.global_policy(Policy::named("daily").limit(Key::api_key("x-api-key"), "10000/day"))
//! };
//! let limiter = Limiter::from_config_with("rate-limits.yaml", daily)?;
//! let watcher = ConfigWatcher::builder(&limiter, "rate-limits.yaml")
//!     .customize(daily)
//!     .every(Duration::from_secs(1))
//!     .start()?;
//! // ... serve; on SIGHUP, `watcher.reload_now()` reloads at once (a change the watcher
//! // waits for as maybe caught mid-write is left to it: `ConfigError::Unsettled`).
//! # drop(watcher); Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::{Config, ConfigError, Declared};
use crate::engine::lock;
use crate::limiter::{Limiter, LimiterBuilder};

/// How often a watcher reads its file unless told otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(500);

/// The shortest interval a watcher polls at.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// How many polls in a row must read a change the same before a watcher loads it, when it
/// may be the file loaded before caught mid-write (see the module docs); other changes are
/// loaded at the second.
pub const DROP_READS: u32 = 10;

type Adjust = Arc<dyn Fn(&mut Config) + Send + Sync>;
type Customize = Arc<dyn Fn(LimiterBuilder) -> LimiterBuilder + Send + Sync>;

/// Sets up a [`ConfigWatcher`]: made by [`ConfigWatcher::builder`].
#[must_use = "a watch builder does nothing until `start` is called"]
pub struct WatchBuilder {
    limiter: Limiter,
    path: PathBuf,
    every: Duration,
    adjust: Option<Adjust>,
    customize: Option<Customize>,
}

impl std::fmt::Debug for WatchBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchBuilder")
            .field("path", &self.path)
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

impl WatchBuilder {
    /// How often the file is read (default [`DEFAULT_INTERVAL`], 500 ms; at least
    /// [`MIN_INTERVAL`], a shorter one is raised to it).
    pub fn every(mut self, interval: Duration) -> Self {
        self.every = interval.max(MIN_INTERVAL);
        self
    }

    /// Changes the configuration as read, before its rules are applied (e.g. the key of
    /// rules that name none: `config.default_key = Some(KeyText::ApiKey(..))`), as code did
    /// before building the limiter.
    pub fn adjust<F>(mut self, adjust: F) -> Self
    where
        F: Fn(&mut Config) + Send + Sync + 'static,
    {
        self.adjust = Some(Arc::new(adjust));
        self
    }

    /// Adds the rules code adds to the file's (a global policy, a route a file cannot
    /// express), as [`Limiter::from_config_with`] did at build. The builder it is given
    /// holds the file's rules; it may add rules, not settings a reload cannot change (see
    /// [`Limiter::reload`]).
    pub fn customize<F>(mut self, customize: F) -> Self
    where
        F: Fn(LimiterBuilder) -> LimiterBuilder + Send + Sync + 'static,
    {
        self.customize = Some(Arc::new(customize));
        self
    }

    /// Reads the file (what is there now is taken as what the limiter runs: it is not
    /// reloaded) and starts polling it on a thread named `tollgate-config-watch`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Read`] if the file cannot be read, [`ConfigError::Watch`] if the
    /// thread cannot start.
    pub fn start(self) -> Result<ConfigWatcher, ConfigError> {
        let seen = read(&self.path)?;
        // What is there now is what the limiter runs: if it declares limits, a reload of
        // a file that declares none is refused. (A file that does not parse declares
        // nothing to keep.)
        let running = Config::from_path_text(&self.path, &seen).ok();
        if running.as_ref().is_some_and(|c| !c.declares_no_limits()) {
            *crate::engine::lock(&self.limiter.engine.file_declares_limits) = true;
        }
        let watch = Arc::new(Watch {
            limiter: self.limiter,
            path: self.path,
            adjust: self.adjust,
            customize: self.customize,
            seen: Mutex::new(Seen {
                declared: running.map(|c| c.declared()),
                ..Seen::new(seen)
            }),
            loading: Mutex::new(()),
        });
        let (stop, stopped) = mpsc::channel::<()>();
        let every = self.every;
        let polled = watch.clone();
        let thread = std::thread::Builder::new()
            .name("tollgate-config-watch".into())
            .spawn(move || {
                // Until the watcher is stopped or dropped (the channel closes).
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    polled.poll();
                }
            })
            .map_err(|source| ConfigError::Watch {
                path: watch.path.clone(),
                source,
            })?;
        Ok(ConfigWatcher {
            watch,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// Watches a limiter's configuration file and reloads its rules when the file changes
/// (see the [module](self)). Stops when dropped (or [`ConfigWatcher::stop`]).
pub struct ConfigWatcher {
    watch: Arc<Watch>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ConfigWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigWatcher")
            .field("path", &self.watch.path)
            .finish_non_exhaustive()
    }
}

impl ConfigWatcher {
    /// A watcher of the file at `path` for `limiter`, to set up and
    /// [`start`](WatchBuilder::start).
    pub fn builder(limiter: &Limiter, path: impl AsRef<Path>) -> WatchBuilder {
        WatchBuilder {
            limiter: limiter.clone(),
            path: path.as_ref().to_path_buf(),
            every: DEFAULT_INTERVAL,
            adjust: None,
            customize: None,
        }
    }

    /// The file watched.
    pub fn path(&self) -> &Path {
        &self.watch.path
    }

    /// Reads the file and reloads it now, changed or not (e.g. on `SIGHUP`), unless it may
    /// be the running file caught mid-write (as the watcher judges it: it drops a route,
    /// says less in its last route, or changes a global limit or a bucket): that is left
    /// to the watcher, which tries it once it reads the same for [`DROP_READS`] polls (a
    /// review: a `SIGHUP` during a write that stalled loaded a file without its last route
    /// and the global limit, admitting 12 of 12 where 8 were the limit). Logs nothing: the
    /// caller has the result.
    ///
    /// # Errors
    ///
    /// Why the file was not reloaded (the running rules then stay): as
    /// [`Limiter::reload_config_with`], [`ConfigError::Read`], or
    /// [`ConfigError::Unsettled`] for a file left to the watcher.
    pub fn reload_now(&self) -> Result<(), ConfigError> {
        let watch = &*self.watch;
        // One load at a time, each of what it read then: a poll that read the file before
        // this and loaded after it would put an older file back (a review: a `SIGHUP`'s
        // file overwritten by the one the watcher had read, for good).
        let _loading = lock(&watch.loading);
        let content = match read(&watch.path) {
            Ok(content) => content,
            Err(error) => return crate::observe::reload_tried(Err(error)),
        };
        let mut seen = lock(&watch.seen);
        // Left to the watcher, which tries it once it holds still (not counted as a refused
        // reload: it is not refused). A file that declares nothing is refused below, as
        // always.
        let unsettled = seen.content != content
            && watch
                .drops(seen.declared.as_ref(), &content)
                .is_some_and(|(now, _)| !now.is_empty());
        if unsettled {
            return Err(ConfigError::Unsettled {
                file: watch.path.display().to_string(),
                polls: DROP_READS,
            });
        }
        *seen = Seen {
            declared: seen.declared.take(),
            ..Seen::new(content.clone())
        };
        drop(seen);
        watch.load(&content)
    }

    /// Stops watching, and waits for the watcher's thread to end.
    pub fn stop(mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ConfigWatcher {
    fn drop(&mut self) {
        // Closing the channel wakes the thread, which then ends.
        self.stop.take();
    }
}

/// What a watcher reloads, and what it last saw.
struct Watch {
    limiter: Limiter,
    path: PathBuf,
    adjust: Option<Adjust>,
    customize: Option<Customize>,
    seen: Mutex<Seen>,
    /// Held by a poll, from its read to its load, and by [`ConfigWatcher::reload_now`]:
    /// the file is loaded in the order it was read.
    loading: Mutex<()>,
}

struct Seen {
    /// The content last loaded (or tried).
    content: String,
    /// Whether the last read failed (logged once, until it succeeds again).
    unreadable: bool,
    /// A new content, and how many polls in a row read it: it is loaded when the next
    /// poll reads it again (after [`DROP_READS`], if it may be the file last loaded caught
    /// mid-write, `declared`), so that a file read while it was being written is not loaded
    /// half-written.
    changed: Option<(String, u32)>,
    /// What the file last loaded declared.
    declared: Option<Declared>,
}

impl Seen {
    fn new(content: String) -> Self {
        Self {
            content,
            unreadable: false,
            changed: None,
            declared: None,
        }
    }
}

impl Watch {
    /// One poll: reloads if the content changed; logs what happened.
    fn poll(&self) {
        let _loading = lock(&self.loading);
        let content = match read(&self.path) {
            Ok(content) => content,
            Err(error) => {
                let mut seen = lock(&self.seen);
                if !seen.unreadable {
                    seen.unreadable = true;
                    tracing::warn!(
                        target: "tollgate",
                        file = %self.path.display(),
                        %error,
                        "cannot read the rate-limit configuration; the running rules stay"
                    );
                    // Once, until it reads again: the file's rules are not what runs.
                    crate::observe::count_reload(false);
                }
                return;
            }
        };
        {
            let mut seen = lock(&self.seen);
            seen.unreadable = false;
            if seen.content == content {
                seen.changed = None;
                return;
            }
            let reads = match &mut seen.changed {
                Some((changed, reads)) if *changed == content => {
                    *reads += 1;
                    *reads
                }
                // Changed since the last poll: load it once it reads the same twice.
                _ => {
                    seen.changed = Some((content, 1));
                    return;
                }
            };
            if reads < DROP_READS {
                if let Some((now, were)) = self.drops(seen.declared.as_ref(), &content) {
                    if reads == 2 {
                        tracing::warn!(
                            target: "tollgate",
                            file = %self.path.display(),
                            file_routes = now.routes(),
                            file_routes_loaded = were.routes(),
                            "the rate-limit configuration now drops a route, says less in its \
                             last route, or changes a global limit or a bucket: it is loaded if \
                             it reads the same for {DROP_READS} polls (a file read mid-write \
                             would lift the limits not written yet)"
                        );
                    }
                    return;
                }
            }
            seen.changed = None;
            seen.content = content.clone();
        }
        match self.load(&content) {
            Ok(()) => tracing::info!(
                target: "tollgate",
                file = %self.path.display(),
                "rate-limit configuration reloaded"
            ),
            Err(error) => tracing::error!(
                target: "tollgate",
                file = %self.path.display(),
                %error,
                "rate-limit configuration not reloaded; the previous rules stay in force"
            ),
        }
    }

    /// What `content` declares, and what the file last loaded did (`loaded`), when
    /// `content` may be that file caught mid-write ([`Declared::may_be_cut_from`]). (Content
    /// that does not read declares nothing to wait for: its error is logged at once.)
    fn drops<'w>(
        &self,
        loaded: Option<&'w Declared>,
        content: &str,
    ) -> Option<(Declared, &'w Declared)> {
        let now = Config::from_path_text(&self.path, content).ok()?.declared();
        let were = loaded?;
        now.may_be_cut_from(were).then_some((now, were))
    }

    /// Reloads the limiter from `content`, the file's text: one reload tried. A panic of
    /// the code given to the watcher (`adjust`, `customize`) is a reload that failed, not
    /// the end of the watcher's thread (a review: one panic, and no later edit was ever
    /// loaded); it comes before the rules are swapped, so the running ones stay.
    fn load(&self, content: &str) -> Result<(), ConfigError> {
        let loaded =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.load_rules(content)))
                .unwrap_or_else(|panic| {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|m| m.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "no message".to_string());
                    Err(ConfigError::Panicked {
                        file: self.path.display().to_string(),
                        message,
                    })
                });
        crate::observe::reload_tried(loaded)
    }

    /// [`Watch::load`], not counted.
    fn load_rules(&self, content: &str) -> Result<(), ConfigError> {
        let mut config = Config::from_path_text(&self.path, content)?;
        let file = self.path.display().to_string();
        // Judged as read, as `start` judged the file it found.
        let (declares, declared) = (!config.declares_no_limits(), config.declared());
        if let Some(adjust) = &self.adjust {
            adjust(&mut config);
        }
        self.limiter
            .reload_config_rules(&config, &file, declares, |rules| match &self.customize {
                Some(customize) => customize(rules),
                None => rules,
            })?;
        // Loaded: now a file that declares nothing is worth a warning (one refused, or
        // waited for as maybe mid-write, was not loaded and is not).
        config.warn_if_it_limits_nothing(&file);
        lock(&self.seen).declared = Some(declared);
        Ok(())
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use tollgate_testkit::TempDir;

    use super::*;

    const RULES: &str = "routes:\n  - { path: /*, name: a, limits: [{ limit: 2/min }] }\n";

    /// `limits.yaml` holding [`RULES`] in a directory of its own (removed when dropped),
    /// the limiter built from it, and a watch of it as [`WatchBuilder::start`] makes one
    /// (the file read once).
    fn watching(tag: &str) -> (TempDir, PathBuf, Limiter, Watch) {
        let dir = TempDir::new(tag).unwrap();
        let path = dir.path().join("limits.yaml");
        std::fs::write(&path, RULES).unwrap();
        let limiter = Limiter::from_config(&path).unwrap();
        let watch = Watch {
            limiter: limiter.clone(),
            path: path.clone(),
            adjust: None,
            customize: None,
            seen: Mutex::new(Seen::new(RULES.to_string())),
            loading: Mutex::new(()),
        };
        (dir, path, limiter, watch)
    }

    fn limit_of(limiter: &Limiter) -> u64 {
        limiter.describe()[0].limits[0]
            .limit
            .unwrap()
            .quota()
            .count()
    }

    /// A change is loaded when a second poll reads it again (not half-written); a file
    /// that declares no limits where the running one did is never loaded.
    #[test]
    fn a_change_is_loaded_once_it_reads_the_same_twice_and_an_emptied_file_never() {
        let (_dir, path, limiter, watch) = watching("poll");
        // Written in place, read mid-write, then whole.
        std::fs::write(&path, &RULES[..RULES.len() / 2]).unwrap();
        watch.poll();
        std::fs::write(&path, RULES.replace("2/min", "7/min")).unwrap();
        watch.poll();
        assert_eq!(limit_of(&limiter), 2, "read once: not loaded yet");
        watch.poll();
        assert_eq!(limit_of(&limiter), 7, "read twice the same: loaded");
        // Emptied: read twice, refused.
        std::fs::write(&path, "").unwrap();
        watch.poll();
        watch.poll();
        watch.poll();
        assert_eq!(limit_of(&limiter), 7);
    }

    /// A change that declares fewer routes or global limits than the file loaded before
    /// is loaded only once [`DROP_READS`] polls read it the same: a writer that stalls
    /// mid-file for a second or two does not lift the limits it had not written yet (a
    /// review: a stall of 0.9 to 1.5 s dropped a route and the gateway's limit for as long
    /// as it lasted). A change that keeps every route is loaded at the second read (a
    /// route added at the end whose path a broader route covers waits too), and
    /// `reload_now` leaves a shorter file to the watcher (a review: a `SIGHUP` during a
    /// stalled write loaded the file without its last route and the global limit).
    #[test]
    fn a_change_that_drops_rules_is_loaded_only_once_it_holds_still() {
        let (_dir, path, limiter, watch) = watching("drops");
        let two = format!("{RULES}  - {{ path: /b, name: b, limits: [{{ limit: 9/min }}] }}\n");
        std::fs::write(&path, &two).unwrap();
        watch.poll();
        watch.poll();
        assert_eq!(
            limiter.describe().len(),
            2,
            "as many and more: at the second read"
        );
        // The second rule not written yet (the writer stalled after the first).
        std::fs::write(&path, RULES).unwrap();
        for read in 1..DROP_READS {
            watch.poll();
            assert_eq!(limiter.describe().len(), 2, "read {read} times: not loaded");
        }
        watch.poll();
        assert_eq!(
            limiter.describe().len(),
            1,
            "read {DROP_READS} times: loaded"
        );
        // The writer finishes: a route added at the end (which, cut, could take a path
        // from a broader route without its own limits written yet) waits as well.
        std::fs::write(&path, &two).unwrap();
        for _ in 0..DROP_READS {
            watch.poll();
        }
        assert_eq!(limiter.describe().len(), 2);
        // On demand (`SIGHUP`): left to the watcher, which loads it once it holds still.
        std::fs::write(&path, RULES).unwrap();
        watch.poll();
        let watcher = ConfigWatcher {
            watch: Arc::new(watch),
            stop: None,
            thread: None,
        };
        assert!(matches!(
            watcher.reload_now(),
            Err(ConfigError::Unsettled {
                polls: DROP_READS,
                ..
            })
        ));
        assert_eq!(limiter.describe().len(), 2);
        for _ in 1..DROP_READS {
            watcher.watch.poll();
        }
        assert_eq!(limiter.describe().len(), 1, "loaded by the watcher");
        // A change it does not wait for is loaded at once.
        std::fs::write(&path, RULES.replace("2/min", "5/min")).unwrap();
        watcher.reload_now().unwrap();
        assert_eq!(limit_of(&limiter), 5);
    }

    /// A route cut short (the writer stalled inside it) says less than the running file's
    /// route of that path, and waits as a dropped rule does: loaded at the
    /// second read, a route's burst went from 20 to 1,200 and its daily cap of 50 went (a
    /// review: 2,119 admitted to 10 keys that had spent the cap, while the writer stalled
    /// 1.7 s). So do its later lines, each a limit lifted if cut: a cost (`cost: 15` cut to
    /// `cost: 1`), its name (its counts start afresh), whose budget (`per:`, or a header's
    /// name cut short, `per: api_key` cut from `api_key:authorization`), a list of
    /// statuses that count; and the same cuts in an edit that
    /// adds a route before it, or a setting before the cut; and a route added at the end,
    /// cut (a review: its daily cap not written yet, the broader route's no longer
    /// applying). An edit of a value of the last route, or of a route before it, is loaded
    /// at the second read; a global limit cut short waits.
    #[test]
    fn a_route_cut_short_is_loaded_only_once_it_holds_still() {
        let (_dir, path, _limiter, watch) = watching("cut");
        let route = "  - path: /b\n    rate_limit:\n      sustained: 1200/min\n      \
                     burst: 20/s\n      daily: 50/day\n      per: header:x-api-key\n    \
                     count_only_statuses:\n      - 401\n      - 403\n    cost: 15\n    \
                     name: b\n";
        let added = "  - path: /a/*\n    limits: [{ limit: 10/min }, { limit: 100/day }]\n";
        let global =
            "global:\n  - { limit: 1000/min }\n  - limit: 5000/hour\n    per: header:x-tenant\n";
        let loaded = || lock(&watch.seen).content.clone();
        // `content` written, then read `reads` times.
        let write_and_read = |content: &str, reads: u32| {
            std::fs::write(&path, content).unwrap();
            for _ in 0..reads {
                watch.poll();
            }
        };
        // `content` written, and read one time fewer than it takes: `running` stays.
        let held_off = |content: &str, running: &str, what: &str| {
            std::fs::write(&path, content).unwrap();
            for read in 1..DROP_READS {
                watch.poll();
                assert_eq!(loaded(), running, "{what}, read {read} times");
            }
        };
        // Cut after each of these, or ending with each.
        let cut_after = [
            "sustained: 1200/min\n",
            "burst: 20/s\n",
            "per: header:x-api",
            "- 401\n",
            "cost: 1",
            "cost: 15\n",
            "per: header:x-ten",
        ];
        for whole in [
            format!("routes:\n{route}"),
            format!("routes:\n{added}{route}"),
            format!(
                "routes:\n{}",
                route.replace("    rate_limit", "    shadow: false\n    rate_limit")
            ),
            format!("routes:\n{added}{route}{global}"),
        ] {
            write_and_read(&whole, DROP_READS);
            assert_eq!(loaded(), whole, "loaded");
            for end in cut_after
                .iter()
                .filter_map(|at| Some(whole.find(at)? + at.len()))
            {
                let cut = &whole[..end];
                held_off(cut, &whole, &format!("cut to {cut:?}"));
                // The writer finishes.
                write_and_read(&whole, 1);
                assert_eq!(loaded(), whole);
            }
        }
        // A route added at the end, cut before its daily cap: the broader route's limits
        // no longer apply to its path, and its own cap is not written yet.
        let base = format!("routes:\n{added}{route}");
        write_and_read(&base, DROP_READS);
        assert_eq!(loaded(), base);
        let more = format!(
            "{base}  - path: /a/export\n    limits:\n      - limit: 100/min\n      - limit: 5/day\n"
        );
        let cut = &more[..more.find("      - limit: 5/day").unwrap()];
        held_off(cut, &base, "a route added at the end, cut");
        write_and_read(&more, DROP_READS);
        assert_eq!(loaded(), more);
        // A key's header cut short to none: `per: api_key` reads `x-api-key`.
        let keyed = more.replace(
            "      - limit: 5/day\n",
            "      - limit: 5/day\n        per: api_key:authorization\n",
        );
        write_and_read(&keyed, DROP_READS);
        assert_eq!(loaded(), keyed);
        let cut = &keyed[..keyed.len() - ":authorization\n".len()];
        held_off(cut, &keyed, "`per: api_key` cut");
        write_and_read(&more, DROP_READS);
        assert_eq!(loaded(), more);
        // An edit of a value of the last route: at the second read (a burst raised, as
        // seed 004's test of its file does).
        let raised = more.replace("5/day", "6/day");
        write_and_read(&raised, 2);
        assert_eq!(loaded(), raised);
        let more = raised;
        // An edit of the route before the last: at the second read.
        let edited = more.replace("10/min", "20/min");
        write_and_read(&edited, 2);
        assert_eq!(loaded(), edited);
        // A cut held still is loaded after ten reads.
        let cut = &edited[..edited.find("burst").unwrap()];
        write_and_read(cut, DROP_READS);
        assert_eq!(loaded(), cut);
    }

    /// A watched file that turns unreadable counts one refused reload (and is warned of
    /// once) until it reads again, however many polls fail; the running rules stay.
    #[cfg(feature = "metrics")]
    #[test]
    fn an_unreadable_file_counts_one_refused_reload_until_it_reads_again() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};

        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        // The refused reloads counted since the last look.
        let refused = || {
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .filter(|(key, ..)| {
                    let key = key.key();
                    key.name() == crate::observe::CONFIG_RELOADS_TOTAL
                        && key.labels().any(|l| l.value() == "refused")
                })
                .map(|(.., value)| match value {
                    DebugValue::Counter(n) => n,
                    other => panic!("{other:?}"),
                })
                .sum::<u64>()
        };
        let (_dir, path, limiter, watch) = watching("unread");
        let polls = |n: usize| {
            ::metrics::with_local_recorder(&recorder, || (0..n).for_each(|_| watch.poll()));
        };
        std::fs::remove_file(&path).unwrap();
        polls(3);
        assert_eq!(refused(), 1, "three polls of a missing file: one refusal");
        assert_eq!(limit_of(&limiter), 2);
        // Read again (unchanged: nothing to reload), then gone again: counted again.
        std::fs::write(&path, RULES).unwrap();
        polls(1);
        assert_eq!(refused(), 0);
        std::fs::remove_file(&path).unwrap();
        polls(2);
        assert_eq!(refused(), 1, "unreadable again after a read: one more");
        assert_eq!(limit_of(&limiter), 2);
    }
}
