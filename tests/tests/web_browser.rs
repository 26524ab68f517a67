//! What a person sees, in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`) driven over WebDriver against a real `smtpguard-demo`
//! process (embedded broker, ingest, web UI) on loopback ephemeral ports with its seeded
//! database. Screenshots land in `target/screenshots/`, and in `docs/screenshots/`
//! when `SMTPGUARD_DOC_SCREENSHOTS=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod web_common;

use web_common::{Browser, Server};

fn is_png(bytes: &[u8]) -> bool {
    bytes.len() > 1000 && bytes.starts_with(b"\x89PNG\r\n\x1a\n")
}

#[test]
fn a_subscriber_sees_the_infected_device_explained_and_requests_release() {
    let s = Server::start_demo_process().unwrap();
    let a = &s.seeded.households[0];
    let (bot_mac, bot_name) = a.flagged.clone().unwrap();
    let other = &s.seeded.households[1];
    let (_, other_name) = other.flagged.clone().unwrap();

    // A phone-sized window: the portal is for subscribers on their phones.
    let b = Browser::start(412, 1800).unwrap();
    b.goto(&s.url("/my")).unwrap();
    assert!(b.url_ends_with("/login"), "not sent to the login form");
    b.type_into("#token", "hh_wrong").unwrap();
    b.follow("#signin").unwrap();
    assert!(b
        .page_text()
        .unwrap()
        .contains("That access code is not valid."));
    // The code from the letter, typed the way people do: small letters, spaces for dashes,
    // shown while typing.
    assert_eq!(a.letter_code.len(), 14, "{:?}", a.letter_code);
    b.click("#show-code").unwrap();
    assert_eq!(
        b.execute("return document.getElementById('token').type")
            .unwrap(),
        "text"
    );
    b.type_into("#token", &a.letter_code.to_lowercase().replace('-', " "))
        .unwrap();
    b.screenshot("portal-sign-in").unwrap();
    b.follow("#signin").unwrap();
    assert!(b.url_ends_with("/my"), "not signed in: {:?}", b.url());

    let text = b.page_text().unwrap();
    assert!(text.contains("Your devices"));
    assert!(text.contains("1 of your devices needs attention"), "{text}");
    // The infected device is the marked card, with what it did in plain language.
    let card = b
        .find(&format!("section.card.infected[data-mac='{bot_mac}']"))
        .unwrap();
    let card_text = b.text(&card).unwrap();
    assert!(card_text.contains(&bot_name));
    assert!(card_text.contains("Infected"));
    // The plain-language summary names what stands out; the numbers are the router's own,
    // in the evidence beside it, so the two can never disagree.
    assert!(
        card_text.contains("tried to send mail directly to many different mail servers"),
        "{card_text}"
    );
    // The technical evidence is folded away until asked for.
    assert!(!card_text.contains("312 connections"), "{card_text}");
    b.click(&format!(
        "section.card.infected[data-mac='{bot_mac}'] details.evidence summary"
    ))
    .unwrap();
    let card_text = b.text(&card).unwrap();
    assert!(
        card_text.contains("312 connections to 287 distinct mail servers on port 25 in 10 minutes"),
        "{card_text}"
    );
    assert!(card_text.contains("Sending mail from this device is blocked until"));
    assert!(card_text.contains("How to clean it up"));
    // In the household's time (the demo's portal zone is Europe/Berlin), with what happens
    // next and whom to call.
    assert!(
        card_text.contains(" CET") || card_text.contains(" CEST"),
        "{card_text}"
    );
    assert!(
        card_text.contains("The restriction ends by itself on"),
        "{card_text}"
    );
    assert!(card_text.contains("web mail in the browser"), "{card_text}");
    assert!(text.contains("call 0800 555 0100"), "{text}");
    // Clean devices are listed, not marked; the other household is nowhere.
    assert!(text.contains("Pixel-8"));
    assert_eq!(b.find_all("section.card.infected").unwrap().len(), 1);
    assert!(!text.contains(&other_name));
    assert!(!text.contains(&other.cpe_id));
    b.screenshot("portal-infected-device").unwrap();

    b.type_into(
        "textarea[name=note]",
        "Ran a full Defender offline scan; it removed a trojan.",
    )
    .unwrap();
    b.follow("button[name=request_release]").unwrap();
    let text = b.page_text().unwrap();
    assert!(text.contains("your release request was recorded"), "{text}");
    let status = b.find(".release-status").unwrap();
    assert!(b.text(&status).unwrap().contains("Release requested on"));
    let png = b.screenshot("portal-release-requested").unwrap();
    assert!(is_png(&png));

    // Another household's device by URL: not found.
    b.goto(&s.url(&format!(
        "/my/devices/{}/{}",
        other.cpe_id,
        other.flagged.clone().unwrap().0
    )))
    .unwrap();
    let text = b.page_text().unwrap();
    assert!(text.contains("Not found"));
    assert!(!text.contains(&other_name));

    // The stolen-credentials household gets the password advice first.
    b.follow("form[action='/logout'] button").ok();
    b.goto(&s.url("/login")).unwrap();
    b.type_into("#token", &other.token).unwrap();
    b.follow("#signin").unwrap();
    assert!(b.url_ends_with("/my"), "the long token still signs in");
    b.click("details.evidence summary").unwrap();
    let text = b.page_text().unwrap();
    assert!(
        text.contains("sent many messages through a mail account"),
        "{text}"
    );
    assert!(
        text.contains("412 messages submitted through 198.51.100.7:587 in 10 minutes"),
        "{text}"
    );
    assert!(text.contains("Change the password of your e-mail account now"));
    assert!(text.contains("Mail from this device is slowed down until"));
    b.screenshot("portal-stolen-credentials").unwrap();
}

#[test]
fn the_noc_sees_the_fleet_the_evidence_the_campaign_and_an_abuse_answer() {
    let s = Server::start_demo_process().unwrap();
    let a = &s.seeded.households[0];
    let (bot_mac, bot_name) = a.flagged.clone().unwrap();
    let b = Browser::start(1366, 1000).unwrap();
    b.goto(&s.url("/login")).unwrap();
    b.type_into("#token", &s.operator).unwrap();
    b.follow("#signin").unwrap();
    assert!(b.url_ends_with("/noc"), "not signed in: {:?}", b.url());

    let infected = b.find("#stat-infected b").unwrap();
    assert_eq!(b.text(&infected).unwrap(), "3");
    let online = b.find("#stat-online b").unwrap();
    assert_eq!(b.text(&online).unwrap(), "3");
    let row = b
        .find(&format!("tr.dev.infected[data-mac='{bot_mac}']"))
        .unwrap();
    let row_text = b.text(&row).unwrap();
    assert!(row_text.contains(&bot_name));
    assert!(row_text.contains("The Müller family"));
    assert!(
        row_text.contains("312 connections to 287 distinct mail servers"),
        "{row_text}"
    );
    assert!(row_text.contains("Mail blocked until"));
    b.screenshot("noc-fleet").unwrap();

    b.follow(&format!("a[href='/noc/cpe/{}']", a.cpe_id))
        .unwrap();
    let text = b.page_text().unwrap();
    assert!(text.contains("Evidence timeline"));
    assert!(
        text.contains("suspicious → Infected") || text.contains("suspicious →"),
        "{text}"
    );
    b.screenshot("noc-cpe").unwrap();

    b.goto(&s.url("/noc/campaigns")).unwrap();
    let text = b.page_text().unwrap();
    assert!(text.contains("2 households"));
    assert!(text.contains("EHLO cozoxory.club"));
    b.screenshot("noc-campaigns").unwrap();
    b.follow("#campaign-list tbody a").unwrap();
    assert!(b.page_text().unwrap().contains("EHLO cozoxory.club"));
    b.click("form[action$='/push'] input[name=confirm]")
        .unwrap();
    b.follow("form[action$='/push'] button").unwrap();
    assert!(b
        .page_text()
        .unwrap()
        .contains("Indicators pushed to the fleet in policy version 2"));

    b.goto(&s.url("/noc/policy")).unwrap();
    let text = b.page_text().unwrap();
    assert!(text.contains("Rollout"));
    assert!(text.contains("does not verify against the installed key"));
    b.screenshot("noc-policy").unwrap();

    // Paste an abuse complaint as JSON and get the device.
    let (at, _, _) = s.seeded.abuse_example;
    b.goto(&s.url("/noc/abuse")).unwrap();
    b.type_into(
        "#report",
        &format!(r#"{{"public_ip":"{}","time":{}}}"#, a.public_ip, at),
    )
    .unwrap();
    b.follow("form[action='/noc/abuse'] button").unwrap();
    let answer = b
        .find("#answer")
        .unwrap_or_else(|e| panic!("{e}\n{}", b.page_text().unwrap_or_default()));
    let answer_text = b.text(&answer).unwrap();
    assert!(answer_text.contains(&bot_name), "{answer_text}");
    assert!(answer_text.contains("The Müller family"));
    b.screenshot("noc-abuse-answer").unwrap();
}
