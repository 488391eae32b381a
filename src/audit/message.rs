//! The audit messages the node emits, in the XML of DICOM PS3.15 A.5.1 with the restrictions of
//! A.5.3 for each event: Application Activity (A.5.3.1), DICOM Instances Transferred (A.5.3.4)
//! and Security Alert (A.5.3.11). Each message is one line: control characters in values become
//! spaces, so a reader can split the file on newlines.

use std::collections::BTreeMap;
use std::net::IpAddr;

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};

/// A coded value (csd-code, codeSystemName, originalText).
#[derive(Clone, Copy, Debug)]
struct Code(&'static str, &'static str, &'static str);

const APPLICATION_ACTIVITY: Code = Code("110100", "DCM", "Application Activity");
const APPLICATION_START: Code = Code("110120", "DCM", "Application Start");
const APPLICATION_STOP: Code = Code("110121", "DCM", "Application Stop");
const INSTANCES_TRANSFERRED: Code = Code("110104", "DCM", "DICOM Instances Transferred");
const SECURITY_ALERT: Code = Code("110113", "DCM", "Security Alert");
const USER_AUTHENTICATION: Code = Code("110114", "DCM", "User Authentication");
const LOGIN: Code = Code("110122", "DCM", "Login");
const LOGOUT: Code = Code("110123", "DCM", "Logout");
const NODE_AUTHENTICATION: Code = Code("110126", "DCM", "Node Authentication");
const RESTRICTED_FUNCTION: Code = Code("110132", "DCM", "Use of Restricted Function");
const ROLE_APPLICATION: Code = Code("110150", "DCM", "Application");
const ROLE_DESTINATION: Code = Code("110152", "DCM", "Destination Role ID");
const ROLE_SOURCE: Code = Code("110153", "DCM", "Source Role ID");
const STUDY_INSTANCE_UID: Code = Code("110180", "DCM", "Study Instance UID");
const NODE_ID: Code = Code("110182", "DCM", "Node ID");
const PATIENT_NUMBER: Code = Code("2", "RFC-3881", "Patient Number");

/// Who reports: this node (AuditSourceIdentification and the node's ActiveParticipant).
#[derive(Clone, Debug)]
pub struct Source {
    /// AuditSourceID (`[audit] source_id`, default the AE title).
    pub source_id: String,
    /// AuditEnterpriseSiteID, when configured.
    pub site_id: Option<String>,
    /// The node's AE title (AlternativeUserID `AETITLES=`).
    pub ae_title: String,
}

/// The far side of an association.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its AE title, when it sent one.
    pub ae_title: Option<String>,
    /// Its IP address, or the host name it was reached at.
    pub address: String,
}

/// Which way instances went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The peer stored them on the node (EventActionCode C).
    Received,
    /// The node stored them on the peer (EventActionCode R: read from the node).
    Sent,
}

/// The instances of one study that went one way over one association (or one delivery pass).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StudyTransfer {
    /// Study Instance UID.
    pub study_uid: String,
    /// Patient ID (0010,0020), empty when absent.
    pub patient_id: String,
    /// Patient's Name (0010,0010), empty when absent.
    pub patient_name: String,
    /// Instances per SOP Class UID.
    pub sop_classes: BTreeMap<String, u32>,
    /// Instances of the study that were refused or failed, and the first reason.
    pub failed: Option<(u32, String)>,
}

/// What a security alert is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alert {
    /// A TLS handshake on the DICOM TLS port failed (no or untrusted client certificate, plain
    /// TCP, protocol error).
    TlsHandshakeFailed,
    /// An A-ASSOCIATE-RQ was rejected for its AE titles.
    AssociationRejected,
}

/// One audit event, ready to be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditEvent {
    /// The node started (true) or stopped (false).
    Application { started: bool },
    /// DICOM instances of one study moved between the node and a peer.
    Instances {
        direction: Direction,
        peer: Peer,
        transfer: StudyTransfer,
    },
    /// A console or API user signed in, failed to, or signed out.
    UserAuthentication {
        /// The user name when it is a configured user; otherwise a placeholder (a mistyped
        /// name may be a password).
        user: String,
        /// The client's IP address.
        address: String,
        /// Sign-in (true) or sign-out (false).
        login: bool,
        /// Whether it succeeded.
        success: bool,
    },
    /// A refused connection or association.
    Security {
        alert: Alert,
        peer: Peer,
        description: String,
    },
}

impl AuditEvent {
    /// The PS3.15 A.5.1 XML of this event, reported by `source` at `when` (`xsd:dateTime`), on
    /// one line.
    pub fn to_xml(&self, source: &Source, when: &str) -> String {
        let mut xml = Xml::new();
        xml.declaration();
        xml.open("AuditMessage", &[]);
        match self {
            AuditEvent::Application { started } => {
                let kind = if *started { APPLICATION_START } else { APPLICATION_STOP };
                xml.event(APPLICATION_ACTIVITY, &[kind], "E", when, "0", None);
                xml.node(source, false, &[ROLE_APPLICATION], None);
                xml.audit_source(source);
            }
            AuditEvent::Instances {
                direction,
                peer,
                transfer,
            } => {
                let (action, node_role, peer_role, peer_requests) = match direction {
                    Direction::Received => ("C", ROLE_DESTINATION, ROLE_SOURCE, true),
                    Direction::Sent => ("R", ROLE_SOURCE, ROLE_DESTINATION, false),
                };
                let (outcome, description) = match &transfer.failed {
                    None => ("0", None),
                    Some((count, why)) => ("4", Some(format!("{count} instance(s) not transferred: {why}"))),
                };
                xml.event(
                    INSTANCES_TRANSFERRED,
                    &[],
                    action,
                    when,
                    outcome,
                    description.as_deref(),
                );
                xml.peer_participant(peer, peer_requests, Some(peer_role));
                xml.node(source, !peer_requests, &[node_role], None);
                xml.audit_source(source);
                xml.study(transfer);
                xml.patient(transfer);
            }
            AuditEvent::UserAuthentication {
                user,
                address,
                login,
                success,
            } => {
                let kind = if *login { LOGIN } else { LOGOUT };
                let (outcome, description) = if *success {
                    ("0", None)
                } else {
                    ("4", Some("wrong user name or password"))
                };
                xml.event(USER_AUTHENTICATION, &[kind], "E", when, outcome, description);
                xml.participant(user, None, true, address, None);
                xml.node(source, false, &[ROLE_APPLICATION], None);
                xml.audit_source(source);
            }
            AuditEvent::Security {
                alert,
                peer,
                description,
            } => {
                let kind = match alert {
                    Alert::TlsHandshakeFailed => NODE_AUTHENTICATION,
                    Alert::AssociationRejected => RESTRICTED_FUNCTION,
                };
                xml.event(SECURITY_ALERT, &[kind], "E", when, "4", Some(description));
                xml.node(source, true, &[], None);
                xml.peer_participant(peer, false, None);
                xml.audit_source(source);
                xml.alert_subject(peer, description);
            }
        }
        xml.close("AuditMessage");
        xml.finish()
    }
}

/// A one-line XML writer over quick-xml; values lose their control characters.
struct Xml(Writer<Vec<u8>>);

/// Control characters (newlines included) would break the one-message-per-line file.
fn flat(value: &str) -> String {
    value.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

impl Xml {
    fn new() -> Self {
        Self(Writer::new(Vec::with_capacity(1024)))
    }

    fn finish(self) -> String {
        String::from_utf8_lossy(&self.0.into_inner()).into_owned()
    }

    // Writing into a Vec cannot fail: the results are ignored on purpose.
    fn declaration(&mut self) {
        let _ = self
            .0
            .write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)));
    }

    fn start(name: &str, attributes: &[(&str, &str)]) -> BytesStart<'static> {
        let mut element = BytesStart::new(name.to_owned());
        for (key, value) in attributes {
            element.push_attribute((*key, flat(value).as_str()));
        }
        element
    }

    fn open(&mut self, name: &str, attributes: &[(&str, &str)]) {
        let _ = self.0.write_event(Event::Start(Self::start(name, attributes)));
    }

    fn close(&mut self, name: &str) {
        let _ = self.0.write_event(Event::End(BytesEnd::new(name.to_owned())));
    }

    fn empty(&mut self, name: &str, attributes: &[(&str, &str)]) {
        let _ = self.0.write_event(Event::Empty(Self::start(name, attributes)));
    }

    fn text_element(&mut self, name: &str, text: &str) {
        self.open(name, &[]);
        let _ = self.0.write_event(Event::Text(BytesText::new(&flat(text))));
        self.close(name);
    }

    fn code(&mut self, name: &str, code: Code) {
        self.empty(
            name,
            &[
                ("csd-code", code.0),
                ("codeSystemName", code.1),
                ("originalText", code.2),
            ],
        );
    }

    fn event(&mut self, id: Code, types: &[Code], action: &str, when: &str, outcome: &str, description: Option<&str>) {
        self.open(
            "EventIdentification",
            &[
                ("EventActionCode", action),
                ("EventDateTime", when),
                ("EventOutcomeIndicator", outcome),
            ],
        );
        self.code("EventID", id);
        for t in types {
            self.code("EventTypeCode", *t);
        }
        if let Some(d) = description {
            self.text_element("EventOutcomeDescription", d);
        }
        self.close("EventIdentification");
    }

    /// This node as an active participant: the process ID as UserID (A.5.2.1), the AE title.
    fn node(&mut self, source: &Source, requestor: bool, roles: &[Code], address: Option<IpAddr>) {
        let pid = std::process::id().to_string();
        let ae = format!("AETITLES={}", source.ae_title);
        let address = address.map(|a| a.to_string());
        let mut attributes = vec![
            ("UserID", pid.as_str()),
            ("AlternativeUserID", ae.as_str()),
            ("UserIsRequestor", if requestor { "true" } else { "false" }),
        ];
        if let Some(a) = &address {
            attributes.extend([
                ("NetworkAccessPointID", a.as_str()),
                ("NetworkAccessPointTypeCode", "2"),
            ]);
        }
        self.open("ActiveParticipant", &attributes);
        for role in roles {
            self.code("RoleIDCode", *role);
        }
        self.close("ActiveParticipant");
    }

    /// The peer as an active participant: its AE title as UserID and `AETITLES=` alternative
    /// (its address when it never sent an AE title), its IP address as access point.
    fn peer_participant(&mut self, peer: &Peer, requestor: bool, role: Option<Code>) {
        let (user, alternative) = match &peer.ae_title {
            Some(ae) => (ae.clone(), Some(format!("AETITLES={ae}"))),
            None => (peer.address.clone(), None),
        };
        self.participant(&user, alternative.as_deref(), requestor, &peer.address, role);
    }

    /// An active participant other than this node, reached at `address`.
    fn participant(
        &mut self,
        user: &str,
        alternative: Option<&str>,
        requestor: bool,
        address: &str,
        role: Option<Code>,
    ) {
        let mut attributes = vec![("UserID", user)];
        if let Some(alt) = alternative {
            attributes.push(("AlternativeUserID", alt));
        }
        attributes.extend([
            ("UserIsRequestor", if requestor { "true" } else { "false" }),
            ("NetworkAccessPointID", address),
            // 2: IP address, 1: machine name.
            (
                "NetworkAccessPointTypeCode",
                if address.parse::<IpAddr>().is_ok() { "2" } else { "1" },
            ),
        ]);
        match role {
            Some(role) => {
                self.open("ActiveParticipant", &attributes);
                self.code("RoleIDCode", role);
                self.close("ActiveParticipant");
            }
            None => self.empty("ActiveParticipant", &attributes),
        }
    }

    fn audit_source(&mut self, source: &Source) {
        let mut attributes = vec![("AuditSourceID", source.source_id.as_str())];
        if let Some(site) = &source.site_id {
            attributes.push(("AuditEnterpriseSiteID", site.as_str()));
        }
        self.open("AuditSourceIdentification", &attributes);
        // 4: application server process.
        self.empty("AuditSourceTypeCode", &[("csd-code", "4")]);
        self.close("AuditSourceIdentification");
    }

    /// Opens a ParticipantObjectIdentification: its ID, type and role (A.5.1 value sets), the
    /// coded kind of ID and a name (required by the stricter editions of the schema).
    fn object(&mut self, id: &str, type_code: &str, role: &str, id_type: Code, name: &str) {
        self.open(
            "ParticipantObjectIdentification",
            &[
                ("ParticipantObjectID", id),
                ("ParticipantObjectTypeCode", type_code),
                ("ParticipantObjectTypeCodeRole", role),
            ],
        );
        self.code("ParticipantObjectIDTypeCode", id_type);
        self.text_element("ParticipantObjectName", name);
    }

    /// The study (system object, report role) and its instance count per SOP class.
    fn study(&mut self, transfer: &StudyTransfer) {
        self.object(&transfer.study_uid, "2", "3", STUDY_INSTANCE_UID, "");
        self.open("ParticipantObjectDescription", &[]);
        for (class, count) in &transfer.sop_classes {
            let count = count.to_string();
            self.empty(
                "SOPClass",
                &[("UID", class.as_str()), ("NumberOfInstances", count.as_str())],
            );
        }
        self.close("ParticipantObjectDescription");
        self.close("ParticipantObjectIdentification");
    }

    /// The patient (person, patient role).
    fn patient(&mut self, transfer: &StudyTransfer) {
        self.object(&transfer.patient_id, "1", "1", PATIENT_NUMBER, &transfer.patient_name);
        self.close("ParticipantObjectIdentification");
    }

    /// The alert subject: the peer's address, with the description as an Alert Description
    /// detail (base64, as the schema's value pairs are).
    fn alert_subject(&mut self, peer: &Peer, description: &str) {
        use base64::Engine;
        let address = peer.address.as_str();
        // System object, security resource role.
        self.object(address, "2", "13", NODE_ID, address);
        let value = base64::engine::general_purpose::STANDARD.encode(description.as_bytes());
        self.empty(
            "ParticipantObjectDetail",
            &[("type", "Alert Description"), ("value", value.as_str())],
        );
        self.close("ParticipantObjectIdentification");
    }
}
