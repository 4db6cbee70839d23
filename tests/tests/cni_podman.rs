//! A real runtime: podman (CNI network backend, runc, cgroupfs) starts
//! containers on two Weft nodes that are network namespaces. The containers
//! reach each other across the mesh, a hostPort published with `-p` goes
//! through the chained portmap plugin, and `podman rm` releases the
//! addresses and the port rules.
//!
//! The image is made here from Debian's static busybox with `podman import`.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use weft_tests::cni::busybox_tar;
use weft_tests::netns::Lab;
use weft_tests::podman::Podman;

const PW: &str = weft_tests::netns::SECRET;
const IMAGE: &str = "localhost/weft-test-busybox";

fn cni_keys(lab: &Lab, i: usize) -> Result<Vec<String>> {
    lab.keys_with_prefix(i, "cni:")
}

#[test]
fn podman_containers_on_two_nodes() -> Result<()> {
    let lab = Lab::builder("pm", 2)
        .password(PW)
        .ipalloc_init("consensus=2")
        .with_cni()
        .start()?;
    lab.gateway(0)?;
    lab.gateway(1)?;
    let tar = busybox_tar(lab.dir(), "podman")?;
    let tar = tar.to_str().context("utf-8 path")?;
    let pm = [Podman::new(&lab, 0)?, Podman::new(&lab, 1)?];
    for p in &pm {
        p.run(&["import", tar, IMAGE])?;
    }

    pm[0].run(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "weft",
        "-p",
        "18081:8080",
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        "/www",
    ])?;
    pm[1].run(&[
        "run",
        "-d",
        "--name",
        "client",
        "--network",
        "weft",
        IMAGE,
        "sleep",
        "600",
    ])?;
    let ip_of = |p: &Podman, name: &str| {
        p.stdout(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.Networks.weft.IPAddress}}",
            name,
        ])
    };
    let web_ip = ip_of(&pm[0], "web")?;
    let client_ip = ip_of(&pm[1], "client")?;
    ensure!(
        web_ip.starts_with("10.") && client_ip.starts_with("10."),
        "container addresses: {web_ip:?} {client_ip:?}"
    );
    ensure!(cni_keys(&lab, 0)?.len() == 1 && cni_keys(&lab, 1)?.len() == 1);

    // Across the mesh, both ways, and HTTP from one container to the other.
    lab.wait_for(
        "containers reach each other",
        Duration::from_secs(60),
        |_| {
            Ok(pm[1]
                .run(&["exec", "client", "ping", "-c1", "-W2", &web_ip])
                .is_ok()
                && pm[0]
                    .run(&["exec", "web", "ping", "-c1", "-W2", &client_ip])
                    .is_ok())
        },
    )?;
    let page = pm[1].stdout(&[
        "exec",
        "client",
        "wget",
        "-qO-",
        &format!("http://{web_ip}:8080/"),
    ])?;
    ensure!(page.contains("hello from podman"), "{page}");

    // The hostPort, from outside the node, through portmap.
    let (outside, _) = lab.add_outside(100)?;
    let url = format!("http://{}:18081/", lab.nodes[0].ip);
    lab.wait_for("the hostPort", Duration::from_secs(20), |l| {
        let out = l.exec_in(&outside, &["curl", "-sf", "--max-time", "2", &url])?;
        Ok(String::from_utf8_lossy(&out.stdout).contains("hello from podman"))
    })?;

    // podman rm: addresses released, port rules gone, veths gone.
    pm[0].run(&["rm", "-f", "-t", "0", "web"])?;
    pm[1].run(&["rm", "-f", "-t", "0", "client"])?;
    ensure!(cni_keys(&lab, 0)?.is_empty(), "{:?}", cni_keys(&lab, 0)?);
    ensure!(cni_keys(&lab, 1)?.is_empty(), "{:?}", cni_keys(&lab, 1)?);
    let nat = lab.exec(0, &["iptables-save", "-t", "nat"])?;
    let nat = String::from_utf8_lossy(&nat.stdout);
    ensure!(!nat.contains("18081"), "hostPort rules left: {nat}");
    let links = lab.exec(0, &["ip", "-o", "link", "show"])?;
    ensure!(
        !String::from_utf8_lossy(&links.stdout).contains(": wf"),
        "a veth was left"
    );
    Ok(())
}
