//! A streaming reader of the dpkg status file (deb822 stanzas separated by
//! blank lines). Only the fields reported are kept, in buffers reused from
//! stanza to stanza; continuation lines (Description, Conffiles) are
//! skipped unread. Never panics on odd input: a stanza without Package is
//! skipped, bytes that are not UTF-8 become U+FFFD.

use std::io::{self, BufRead};
use std::ops::ControlFlow;

use serde::Serialize;

/// One installed package, borrowed from the reader's buffers; valid for
/// the duration of the callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Package<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub architecture: &'a str,
    pub status: &'a str,
    /// KiB, as dpkg records it.
    pub installed_size: Option<u64>,
    /// The source package name (the package's own name without Source).
    pub source: &'a str,
}

/// The fields of the stanza being read.
#[derive(Default)]
struct Stanza {
    package: String,
    version: String,
    architecture: String,
    status: String,
    installed_size: String,
    source: String,
    /// Any field seen since the last blank line.
    open: bool,
}

impl Stanza {
    fn clear(&mut self) {
        for s in [
            &mut self.package,
            &mut self.version,
            &mut self.architecture,
            &mut self.status,
            &mut self.installed_size,
            &mut self.source,
        ] {
            s.clear();
        }
        self.open = false;
    }

    /// The third word of Status is `installed`.
    fn installed(&self) -> bool {
        self.status.split_ascii_whitespace().nth(2) == Some("installed")
    }

    fn package(&self) -> Package<'_> {
        // "Source: glibc (2.36-9)": the name is the first word.
        let source = self.source.split_ascii_whitespace().next();
        Package {
            name: &self.package,
            version: &self.version,
            architecture: &self.architecture,
            status: &self.status,
            installed_size: self.installed_size.trim().parse().ok(),
            source: source.unwrap_or(&self.package),
        }
    }

    /// Stores `value` if `key` is one of the fields kept.
    fn set(&mut self, key: &[u8], value: &[u8]) {
        let slot = if key.eq_ignore_ascii_case(b"Package") {
            &mut self.package
        } else if key.eq_ignore_ascii_case(b"Version") {
            &mut self.version
        } else if key.eq_ignore_ascii_case(b"Architecture") {
            &mut self.architecture
        } else if key.eq_ignore_ascii_case(b"Status") {
            &mut self.status
        } else if key.eq_ignore_ascii_case(b"Installed-Size") {
            &mut self.installed_size
        } else if key.eq_ignore_ascii_case(b"Source") {
            &mut self.source
        } else {
            return;
        };
        slot.clear();
        slot.push_str(&String::from_utf8_lossy(value.trim_ascii()));
    }
}

/// Calls `f` with each installed package of the status file `r`, in file
/// order, until it returns `Break`. Returns the number of packages passed.
pub fn for_each_installed<R: BufRead>(
    mut r: R,
    mut f: impl FnMut(&Package<'_>) -> ControlFlow<()>,
) -> io::Result<usize> {
    let mut line = Vec::with_capacity(256);
    let mut st = Stanza::default();
    let mut passed = 0;
    loop {
        line.clear();
        let eof = r.read_until(b'\n', &mut line)? == 0;
        let text = line.trim_ascii_end();
        if eof || text.is_empty() {
            if st.open && !st.package.is_empty() && st.installed() {
                passed += 1;
                if f(&st.package()).is_break() {
                    return Ok(passed);
                }
            }
            st.clear();
            if eof {
                return Ok(passed);
            }
            continue;
        }
        st.open = true;
        // Continuation lines start with a space or a tab; comments with '#'.
        if matches!(text.first(), Some(b' ' | b'\t' | b'#')) {
            continue;
        }
        if let Some(colon) = text.iter().position(|&b| b == b':') {
            st.set(&text[..colon], &text[colon + 1..]);
        }
    }
}

/// `-n NAME` matches NAME in every architecture; `-n NAME:ARCH` one.
pub fn matches(pkg: &Package<'_>, wanted: &str) -> bool {
    match wanted.split_once(':') {
        Some((name, arch)) => pkg.name == name && pkg.architecture == arch,
        None => pkg.name == wanted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const STATUS: &[u8] = b"Package: bash\n\
Essential: yes\n\
Status: install ok installed\n\
Priority: required\n\
Installed-Size: 7164\n\
Maintainer: Matthias Klose <doko@debian.org>\n\
Architecture: amd64\n\
Multi-Arch: foreign\n\
Version: 5.2.15-2+b7\n\
Description: GNU Bourne Again SHell\n Bash is an sh-compatible command language interpreter.\n .\n Package: fake\n\
\n\
Package: libc6\n\
Status: hold ok installed\n\
Architecture: amd64\n\
Source: glibc (2.36-9+deb12u4)\n\
Version: 2.36-9+deb12u4\n\
Conffiles:\n /etc/ld.so.conf.d/x86_64-linux-gnu.conf d4e7a7b88a71b5ffd9e2644e71a0cfab\n\
\n\
Package: libc6\n\
Status: install ok installed\n\
Architecture: i386\n\
Source: glibc\n\
Version: 2.36-9+deb12u4\n\
Installed-Size: lots\n\
\n\
\n\
Package: oldpkg\n\
Status: deinstall ok config-files\n\
Architecture: amd64\n\
Version: 1.0\n\
\n\
Package: halfway\n\
Status: install reinstreq half-installed\n\
Version: 2\n\
\n\
Status: install ok installed\n\
Version: 3\n\
\n\
Package: caf\xc3\xa9-\xff\n\
Status: install ok installed\n\
Architecture: all\n\
Version: 1:0.1~rc1-1\r\n\
Installed-Size: 12";

    fn all(text: &[u8]) -> Vec<(String, String, String, String, Option<u64>, String)> {
        let mut out = Vec::new();
        for_each_installed(text, |p| {
            out.push((
                p.name.to_owned(),
                p.version.to_owned(),
                p.architecture.to_owned(),
                p.status.to_owned(),
                p.installed_size,
                p.source.to_owned(),
            ));
            ControlFlow::Continue(())
        })
        .unwrap();
        out
    }

    #[test]
    fn installed_packages_only() {
        let got = all(STATUS);
        let names: Vec<&str> = got.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(names, ["bash", "libc6", "libc6", "caf\u{e9}-\u{fffd}"]);
        assert_eq!(
            got[0],
            (
                "bash".into(),
                "5.2.15-2+b7".into(),
                "amd64".into(),
                "install ok installed".into(),
                Some(7164),
                "bash".into()
            )
        );
        assert_eq!(got[1].3, "hold ok installed");
        assert_eq!(got[1].5, "glibc");
        assert_eq!(got[1].4, None);
        assert_eq!(got[2].2, "i386");
        assert_eq!(got[2].4, None, "unparsable Installed-Size is null");
        assert_eq!(got[3].1, "1:0.1~rc1-1", "CR and spaces trimmed");
        assert_eq!(got[3].4, Some(12), "last stanza without a newline");
    }

    #[test]
    fn stops_on_break() {
        let mut n = 0;
        let passed = for_each_installed(STATUS, |_| {
            n += 1;
            ControlFlow::Break(())
        })
        .unwrap();
        assert_eq!((n, passed), (1, 1));
    }

    #[test]
    fn odd_input() {
        assert!(all(b"").is_empty());
        assert!(all(b"\n\n\n").is_empty());
        assert!(all(b"\xff\xfe\x00\n: :\n:\nPackage\n").is_empty());
        assert!(all(b"Package: x\nStatus: install ok installed").len() == 1);
        assert!(all(b"Package: x\nStatus: installed\n").is_empty());
        // Fields are case-insensitive in deb822.
        assert_eq!(all(b"package: y\nstatus: install ok installed\n")[0].0, "y");
    }

    #[test]
    fn name_and_arch_match() {
        let p = Package {
            name: "libc6",
            version: "1",
            architecture: "i386",
            status: "install ok installed",
            installed_size: None,
            source: "glibc",
        };
        assert!(matches(&p, "libc6"));
        assert!(matches(&p, "libc6:i386"));
        assert!(!matches(&p, "libc6:amd64"));
        assert!(!matches(&p, "libc"));
        assert!(!matches(&p, "glibc"));
    }
}
