//! A [`Runtime`] for tests: [`RecordingRuntime`] records every [`Spec`] it is given and
//! answers what it was told to, without touching the host (no process, no mount, no
//! file). The code that builds specs (the worker's RUN) is tested with it without root;
//! [`mounts::plan`](crate::mounts::plan) of a recorded spec shows what the Linux runtime
//! would have mounted.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{InitResult, Result, RunOutcome, Runtime, SandboxError, Spec};

/// One call of [`Runtime::run`].
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The spec it was given.
    pub spec: Spec,
    /// The directory for its files.
    pub run_dir: PathBuf,
}

/// What a [`RecordingRuntime`] answers.
#[derive(Debug, Clone)]
enum Answer {
    Finished(InitResult),
    Error(String),
}

/// A [`Runtime`] that records the specs it runs and answers as told (by default: exit
/// code 0, no output).
#[derive(Debug)]
pub struct RecordingRuntime {
    calls: Mutex<Vec<Recorded>>,
    answer: Mutex<Answer>,
    output: Mutex<Vec<String>>,
}

impl Default for RecordingRuntime {
    fn default() -> RecordingRuntime {
        RecordingRuntime::new()
    }
}

impl RecordingRuntime {
    /// A runtime whose commands exit 0 without output.
    pub fn new() -> RecordingRuntime {
        RecordingRuntime {
            calls: Mutex::new(Vec::new()),
            answer: Mutex::new(Answer::Finished(InitResult::Exited(0))),
            output: Mutex::new(Vec::new()),
        }
    }

    /// From now on, commands exit with `code`.
    pub fn exit_code(&self, code: i32) -> &RecordingRuntime {
        self.answer_with(InitResult::Exited(code))
    }

    /// From now on, commands end as `result` says (a signal, a setup error, ...).
    pub fn answer_with(&self, result: InitResult) -> &RecordingRuntime {
        *self.answer.lock().unwrap() = Answer::Finished(result);
        self
    }

    /// From now on, commands print `lines` (passed to the caller's output callback and
    /// kept as the outcome's tail).
    pub fn output<S: Into<String>>(&self, lines: impl IntoIterator<Item = S>) -> &RecordingRuntime {
        *self.output.lock().unwrap() = lines.into_iter().map(Into::into).collect();
        self
    }

    /// From now on, [`Runtime::run`] fails with `message` ([`SandboxError::Message`]).
    pub fn fail(&self, message: impl Into<String>) -> &RecordingRuntime {
        *self.answer.lock().unwrap() = Answer::Error(message.into());
        self
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Recorded> {
        self.calls.lock().unwrap().clone()
    }

    /// The spec of every call so far, in order.
    pub fn specs(&self) -> Vec<Spec> {
        self.calls().into_iter().map(|c| c.spec).collect()
    }

    /// The spec of the last call.
    pub fn last_spec(&self) -> Option<Spec> {
        self.calls.lock().unwrap().last().map(|c| c.spec.clone())
    }
}

impl Runtime for RecordingRuntime {
    fn run(
        &self,
        spec: &Spec,
        run_dir: &Path,
        output: &(dyn Fn(&str) + Sync),
        cancel: &AtomicBool,
    ) -> Result<RunOutcome> {
        self.calls.lock().unwrap().push(Recorded {
            spec: spec.clone(),
            run_dir: run_dir.to_path_buf(),
        });
        if cancel.load(Ordering::SeqCst) {
            return Err(SandboxError::Cancelled);
        }
        let tail = self.output.lock().unwrap().clone();
        for line in &tail {
            output(line);
        }
        match self.answer.lock().unwrap().clone() {
            Answer::Finished(result) => Ok(RunOutcome { result, tail }),
            Answer::Error(message) => Err(SandboxError::Message(message)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NetworkMode, RootSpec};

    fn spec() -> Spec {
        Spec {
            root: RootSpec::Dir,
            merged: "/nonexistent/merged".into(),
            scratch: "/nonexistent/scratch".into(),
            args: vec!["/bin/sh".into(), "-c".into(), "true".into()],
            env: vec![],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            groups: vec![0],
            network: NetworkMode::Host,
            hostname: "kiln".into(),
            privileged: false,
            mounts: vec![],
            shm_size: None,
            host_files: vec![],
            stubs_file: "/nonexistent/stubs".into(),
            result_file: "/nonexistent/result".into(),
        }
    }

    #[test]
    fn records_specs_and_answers_as_told() {
        let rt = RecordingRuntime::new();
        let cancel = AtomicBool::new(false);
        let seen = Mutex::new(Vec::new());
        let out = |l: &str| seen.lock().unwrap().push(l.to_string());
        let r = rt.run(&spec(), Path::new("/nonexistent/run"), &out, &cancel);
        assert_eq!(r.unwrap().result, InitResult::Exited(0));

        rt.exit_code(3).output(["one", "two"]);
        let r = rt.run(&spec(), Path::new("/nonexistent/run2"), &out, &cancel);
        let r = r.unwrap();
        assert_eq!(r.result, InitResult::Exited(3));
        assert_eq!(r.tail, ["one", "two"]);
        assert_eq!(*seen.lock().unwrap(), ["one", "two"]);

        rt.fail("no sandbox here");
        let e = rt.run(&spec(), Path::new("/r"), &out, &cancel).unwrap_err();
        assert_eq!(e.to_string(), "no sandbox here");

        cancel.store(true, Ordering::SeqCst);
        let e = rt.run(&spec(), Path::new("/r"), &out, &cancel).unwrap_err();
        assert!(matches!(e, SandboxError::Cancelled));

        let calls = rt.calls();
        assert_eq!(calls.len(), 4);
        assert_eq!(calls[1].run_dir, Path::new("/nonexistent/run2"));
        assert_eq!(rt.last_spec().unwrap().args, spec().args);
        // Nothing was written for the spec (no stubs or result file, no run dir).
        assert!(!Path::new("/nonexistent").exists());
    }
}
