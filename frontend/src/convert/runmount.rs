//! `RUN --mount` (BuildKit's `convert_runmount.go`): each mount's source becomes an
//! input of the exec op.

use super::*;

impl Converter<'_> {
    /// The `--mount`s of a RUN, expanded and parsed. A bind or cache mount `from` a
    /// stage or an image, and a bind mount of the context, add an input to the exec; the
    /// mount refers to it by index, never by name.
    pub(super) fn dispatch_run_mounts(
        &mut self,
        stage: &Stage,
        st: &State,
        run: &RunCmd,
        range: Range,
        inputs: &mut Vec<VertexId>,
        mounts: &mut Vec<ExecMount>,
    ) -> Result<(), Diagnostic> {
        for spec in &run.mounts {
            let spec = self.expand(st, spec, range)?;
            let mut m = instructions::parse_mount(&spec).map_err(|e| Diagnostic::at(range, e))?;
            let input = match (&m.kind, &m.from) {
                (MountType::Bind | MountType::Cache, Some(from)) => {
                    let src = match self.stage_ref(from, stage.index, range)? {
                        // A stage the dependency scan did not see (its name came from a
                        // stage-local ARG) must not be mounted as an empty tree.
                        Some(i) => match self.done.get(&i) {
                            Some(p) => p.root,
                            None => {
                                return Err(Diagnostic::at(
                                    range,
                                    format!(
                                        "cannot mount from stage {from:?} to {:?}, stage needs to be defined before current command",
                                        m.target
                                    ),
                                ));
                            }
                        },
                        None => Some(self.image(from, &st.platform, range)?.0),
                    };
                    let src = match src {
                        Some(s) => s,
                        None => self.scratch(),
                    };
                    inputs.push(src);
                    Some(inputs.len() - 1)
                }
                (MountType::Bind, None) => {
                    let ctx = self.context();
                    inputs.push(ctx);
                    Some(inputs.len() - 1)
                }
                _ => None,
            };
            // The input stands for the stage or image `from` named: the name itself must
            // not enter the digest (renaming a stage would invalidate the cache).
            m.from = None;
            mounts.push(ExecMount { spec: m, input });
        }
        Ok(())
    }
}
