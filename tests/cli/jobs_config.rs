//! Config errors say where they are: a TOML syntax error by file, line and
//! column; an unknown key (anywhere) by name and place; a job defined in
//! two files of a config directory by both files. Nothing runs.

use std::fs;

use crate::jobs_util::{JobEnv, Ran};

/// The 1-based number of the line of `text` that contains `needle`.
#[track_caller]
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle:?} is not in:\n{text}")) + 1
}

/// Write `jobs` as the config, run job `app`, return the failed run.
#[track_caller]
fn run_with_config(env: &JobEnv, jobs: &str) -> Ran {
    env.config(jobs);
    let ran = env.run(&["app"]);
    ran.assert_failed();
    ran
}

#[test]
fn a_toml_syntax_error_names_file_line_and_column() {
    let env = JobEnv::new();
    let ran = run_with_config(&env, "[jobs.app]\nretries = = 2\n");

    let text = fs::read_to_string(env.config_path()).unwrap();
    let line = line_of(&text, "retries = = 2");
    // The column of the second `=`.
    ran.assert_says(&format!("{}:{line}:11:", env.config_path().display()));
}

#[test]
fn an_unknown_key_is_rejected_naming_it_and_where_it_is() {
    let cases = [
        ("job", "[jobs.app]\nretires = 2\n", "retires"),
        ("defaults", "[jobs.app]\n\n[defaults.hook]\nrun = \"true\"\n", "hook"),
        (
            "repository",
            "[repositories.other]\npath = \"other\"\npassphrase_fle = \"p\"\n\n[jobs.app]\n",
            "passphrase_fle",
        ),
        (
            "hook",
            "[jobs.app]\n[[jobs.app.hooks]]\nphase = \"before\"\nrun = \"true\"\ntimeout_secs = 5\n",
            "timeout_secs",
        ),
        (
            "database",
            "[jobs.app]\n[[jobs.app.databases]]\nkind = \"sqlite\"\npath = \"a.db\"\npasswrd_file = \"p\"\n",
            "passwrd_file",
        ),
        ("files", "[jobs.app]\n[jobs.app.files]\npaths = []\nexcludes = [\"x\"]\n", "excludes"),
        (
            "notify",
            "[jobs.app]\n[[jobs.app.notify]]\nevents = [\"success\"]\ncommand = \"true\"\nwebhok = \"http://127.0.0.1:9/\"\n",
            "webhok",
        ),
        ("top level", "[jobs.app]\n\n[jbos.web]\n", "jbos"),
    ];
    for (what, jobs, key) in cases {
        let env = JobEnv::new();
        let ran = run_with_config(&env, jobs);
        let text = fs::read_to_string(env.config_path()).unwrap();
        let at = format!("{}:{}:", env.config_path().display(), line_of(&text, key));
        assert!(ran.stderr.contains(&at), "an unknown {what} key should be located at {at}: {ran:?}");
        assert!(ran.stderr.contains(&format!("`{key}`")), "an unknown {what} key should be named: {ran:?}");
    }
}

#[test]
fn a_job_defined_in_two_files_of_a_config_directory_names_both_files() {
    let env = JobEnv::with_config_file("jobs.d", "main");
    fs::create_dir(env.config_path()).unwrap();
    let (shop, web) = (env.config_path().join("shop.toml"), env.config_path().join("web.toml"));
    fs::write(&shop, "[repositories.main]\npath = \"../repo\"\npassphrase_file = \"../passphrase\"\n\n[jobs.app]\nrepositories = [\"main\"]\n").unwrap();
    fs::write(&web, "[jobs.app]\nrepositories = [\"main\"]\n").unwrap();

    let ran = env.run(&["app"]);

    ran.assert_failed().assert_says("\"app\" is defined twice");
    ran.assert_says(&shop.display().to_string()).assert_says(&web.display().to_string());
}

#[test]
fn a_bad_s3_repository_says_what_is_wrong_and_where() {
    // A bucket name S3 would refuse: file, line and column of the url.
    let env = JobEnv::new();
    let ran = run_with_config(
        &env,
        "[repositories.offsite]\nurl = \"s3://Backups_2/shop\"\npassphrase_file = \"passphrase\"\n\n[jobs.app]\n",
    );
    let text = fs::read_to_string(env.config_path()).unwrap();
    let line = line_of(&text, "s3://Backups_2");
    ran.assert_says(&format!("{}:{line}:7:", env.config_path().display())).assert_says("not a valid bucket name");

    // An endpoint that is no http(s) URL: also located.
    let env = JobEnv::new();
    let ran = run_with_config(
        &env,
        "[repositories.offsite]\nurl = \"s3://backups/shop\"\nendpoint = \"garage:3900\"\n\
         passphrase_file = \"passphrase\"\n\n[jobs.app]\n",
    );
    let text = fs::read_to_string(env.config_path()).unwrap();
    let line = line_of(&text, "garage:3900");
    ran.assert_says(&format!("{}:{line}:12:", env.config_path().display()))
        .assert_says("\"garage:3900\" is not an S3 endpoint");

    // S3 settings on a local repository, both path and url, or neither.
    for (repo, says) in [
        ("path = \"r\"\nendpoint = \"http://127.0.0.1:9\"\n", "`endpoint` is for S3 repositories"),
        ("path = \"r\"\nurl = \"s3://backups/shop\"\n", "either `path` or `url`, not both"),
        ("region = \"x\"\n", "no `path`"),
        ("url = \"s3://backups/shop\"\naccess_key_id_file = \"id\"\n", "give both access_key_id_file"),
    ] {
        let env = JobEnv::new();
        let ran = run_with_config(
            &env,
            &format!("[repositories.offsite]\n{repo}passphrase_file = \"passphrase\"\n\n[jobs.app]\n"),
        );
        ran.assert_says(&env.config_path().display().to_string())
            .assert_says("repository \"offsite\"")
            .assert_says(says);
    }
}

#[test]
fn a_job_or_repository_name_that_cannot_name_a_unit_is_rejected_where_it_is_written() {
    // Names become parts of systemd unit and credential names.
    for (jobs, name) in [
        ("[repositories.\"my repo\"]\npath = \"r\"\npassphrase_file = \"passphrase\"\n\n[jobs.app]\n", "\"my repo\""),
        ("[jobs.\"app/2\"]\n", "\"app/2\""),
        // It would read as an option on the command lines of its units.
        ("[jobs.\"--all\"]\n", "\"--all\""),
    ] {
        let env = JobEnv::new();
        let ran = run_with_config(&env, jobs);
        let text = fs::read_to_string(env.config_path()).unwrap();
        let line = line_of(&text, name);
        let column = text.lines().nth(line - 1).and_then(|l| l.find(name)).unwrap() + 1;
        ran.assert_says(&format!("{}:{line}:{column}:", env.config_path().display()))
            .assert_says(&format!("{name} is not a usable name"));
    }
    // Dots are fine (a host name, say).
    let env = JobEnv::new();
    env.config("[repositories.\"nas.local\"]\npath = \"nas\"\npassphrase_file = \"passphrase\"\n\n[jobs.app]\n");
    env.engine(["--repo", "nas.local", "init"]).assert().success();
}

#[test]
fn a_dump_format_is_checked_where_it_is_written() {
    // `custom` is pg_dump's archive format: a MySQL entry cannot have it.
    let env = JobEnv::new();
    let ran = run_with_config(
        &env,
        "[jobs.app]\n[[jobs.app.databases]]\nkind = \"mysql\"\nname = \"shop\"\nformat = \"custom\"\n",
    );
    ran.assert_says(&env.config_path().display().to_string()).assert_says("for postgresql entries only");
    // An unknown format names the ones there are, with file, line and column.
    let env = JobEnv::new();
    let ran = run_with_config(
        &env,
        "[jobs.app]\n[[jobs.app.databases]]\nkind = \"postgresql\"\nname = \"shop\"\nformat = \"tar\"\n",
    );
    let text = fs::read_to_string(env.config_path()).unwrap();
    let line = line_of(&text, "format = \"tar\"");
    ran.assert_says(&format!("{}:{line}:10:", env.config_path().display())).assert_says("plain").assert_says("custom");
}
