//! Writes the snapshot for node_exporter's textfile collector: `DIR/gpuvirt.prom`, replaced
//! atomically (a temp file in DIR, fsync, rename), so the collector never reads half a file.
//! May import: std only.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The file node_exporter reads (it picks up `*.prom`).
pub const FILE_NAME: &str = "gpuvirt.prom";

/// Writing the textfile failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}")]
pub struct TextfileError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Replaces `dir/gpuvirt.prom` with `text`. The temp name does not end in `.prom`, so the
/// collector skips it while it is being written.
pub fn write(dir: &Path, text: &str) -> Result<(), TextfileError> {
    let target = dir.join(FILE_NAME);
    let temp = dir.join(format!(".{FILE_NAME}.{}", std::process::id()));
    let fail = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TextfileError { path, source }
    };
    let mut file = std::fs::File::create(&temp).map_err(fail(&temp))?;
    file.write_all(text.as_bytes()).map_err(fail(&temp))?;
    file.sync_all().map_err(fail(&temp))?;
    drop(file);
    std::fs::rename(&temp, &target).map_err(fail(&target))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_the_file_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("gpuvirt-textfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        super::write(&dir, "a 1\n").expect("first write");
        super::write(&dir, "a 2\n").expect("second write");
        let text = std::fs::read_to_string(dir.join(super::FILE_NAME)).expect("read back");
        assert_eq!(text, "a 2\n");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(super::FILE_NAME)]);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
