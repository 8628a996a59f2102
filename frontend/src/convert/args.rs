//! ARG scoping and word expansion: platform ARGs, global (meta) ARGs, build-arg
//! overrides, and the words of instructions expanded in their stage's environment.

use super::*;

impl Converter<'_> {
    pub(super) fn platform_args(&self) -> Vars {
        let t = &self.opts.target_platform;
        let b = &self.opts.build_platform;
        [
            ("TARGETPLATFORM", t.to_string()),
            ("TARGETOS", t.os().to_owned()),
            ("TARGETARCH", t.architecture().to_owned()),
            ("TARGETVARIANT", t.variant().unwrap_or_default().to_owned()),
            ("BUILDPLATFORM", b.to_string()),
            ("BUILDOS", b.os().to_owned()),
            ("BUILDARCH", b.architecture().to_owned()),
            ("BUILDVARIANT", b.variant().unwrap_or_default().to_owned()),
        ]
        .into_iter()
        .fold(Vars::default(), |mut vars, (k, v)| {
            vars.declare(k.to_string(), Some(v));
            vars
        })
    }

    pub(super) fn init_meta_args(&mut self) -> Result<(), Diagnostic> {
        let mut meta = self.platform_args();
        for (decl, range) in &self.df.meta_args {
            let value = self.arg_value(decl, &meta, *range)?;
            self.used_args.insert(decl.key.clone());
            meta.declare(decl.key.clone(), value);
        }
        self.meta = meta;
        Ok(())
    }

    /// The value of an `ARG` declaration: the build arg if given, else its default
    /// (expanded in `scope`), else the global value for a re-declared global.
    pub(super) fn arg_value(
        &self,
        decl: &ArgDecl,
        scope: &dyn Env,
        range: Range,
    ) -> Result<Option<String>, Diagnostic> {
        if let Some(v) = self.opts.build_args.get(&decl.key) {
            return Ok(Some(v.clone()));
        }
        match &decl.value {
            Some(default) => {
                let v = self
                    .lex
                    .process_word(default, scope)
                    .map_err(|e| shell_err(range, default, e))?;
                Ok(Some(v))
            }
            None => Ok(self.meta.value(&decl.key).map(str::to_owned)),
        }
    }

    pub(super) fn expand_meta(&self, word: &str, range: Range) -> Result<String, Diagnostic> {
        self.lex
            .process_word(word, &self.meta)
            .map_err(|e| shell_err(range, word, e))
    }

    pub(super) fn expand(
        &self,
        st: &State,
        word: &str,
        range: Range,
    ) -> Result<String, Diagnostic> {
        self.lex
            .process_word(word, &StageEnv(st))
            .map_err(|e| shell_err(range, word, e))
    }
}
