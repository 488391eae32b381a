"""Writes the seed corpus of the fuzz targets into fuzz/corpus/<target>/ (replacing it).

    .tools/venv/bin/python fuzz/make_corpus.py     # after `make setup` (pydicom, DCMTK)

Small MR instances (16x16, fixed UIDs, no dates) are written with pydicom in implicit,
explicit and deflated VR LE and transcoded by DCMTK (JPEG-LS, JPEG lossless, RLE); an Enhanced
MR of three frames and a three-slice series come too. DCMTK's storescu and echoscu then talk to
its storescp through a recording proxy, so the PDU seeds are what a real SCU sends (with
storescp's maximum PDU at 4096 for some, so data sets arrive in many fragments). From those:

- pdu: each association's client bytes, whole, plus single PDUs;
- dimse_command: every command set the SCUs sent;
- data_set: one selector byte (index in fcdnode's ACCEPTED_TRANSFER_SYNTAXES, fuzz/fuzz_targets/
  data_set.rs) and each instance's data set without its file meta group;
- assemble: the files, and series of several joined by the target's separator.

Output is deterministic for a given pydicom and DCMTK; every seed stays under 64 KiB.
"""

import base64
import hashlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"

MR = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
# fcdnode::ingest::ACCEPTED_TRANSFER_SYNTAXES, in its order (the data_set target's selector).
ACCEPTED = [
    EXPLICIT,
    IMPLICIT,
    DEFLATED,
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
]
# fuzz_targets/assemble.rs: fcdnode_fuzz::FILE_SEPARATOR.
SEPARATOR = b"\n--FCDFUZZ-FILE--\n"
MAX_SEED = 64 * 1024
# Inputs that once failed, kept as seeds (base64).
REGRESSIONS = {
    # Implicit VR: (0000,0000) UL of 1 byte. dicom-parser read no value but counted the byte, so
    # it read the rest one byte off and allocated 2.8 GB for a length the pre-parse never saw.
    "data_set": [("regression-ul-of-1-byte", "vAAAAAABAAAAQAAAAAEAAAAAAAQoBQAAAAAAAAAAAAAAAAAAAKYAAAAAFwAAAAAAAAA=")],
    # A single slice in RLE Lossless whose segment decodes short (the registry's decoder indexed
    # past it and panicked), and one in JPEG whose stream made the decoder slice out of range:
    # both reached decoding once `fcdnode volume` took single slices.
    "assemble": [
        ("regression-rle-short-segment", (
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAABESUNN"
            "AgAAAFVMBACcAAAAAgABAE9CAAACAAAAAAECAAIAVUkaADEuMi44NDAuMTAwMDguNS4xLjQuMS4xLjQAAgADAFVJ"
            "DAAyLjI1LjEuNC4xLjECABAAVUkUADEuMi44NDAuMTAwMDguMS4yLjUAAgASAFVJHAAxLjIuMjc2LjAuNzIzMDAx"
            "MC4zLjAuMy42LjcAAgATAFNIEABPRkZJU19EQ01US18zNjcgCAAWAFVJGgAxLjIuODQwLjEwMDA4LjUuMS40LjEu"
            "MS40AAgAGABVSQwAMi4yNS4xLjQuMS4xCABgAENTAgBNUggAPhBMTxAAVDF3IE1QUkFHRSBzZWVkIBAAEABQTgoA"
            "RlVaWl5TRUVEIBAAIABMTwYARlVaWjEgGAAjAENTAgAzRBgAUABEUwQAMS41IBgAgABEUwQAMjMwMBgAgQBEUwQA"
            "Mi45OBgAMBBMTxAAVDF3IE1QUkFHRSBzZWVkICAADQBVSQgAMi4yNS4xLjEgAA4AVUkKADIuMjUuMS4yLjEgABMA"
            "SVMCADIgIAAyAERTDgAtOC4wXC04LjBcMS41ICAANwBEUxgAMS4wXDAuMFwwLjBcMC4wXDEuMFwwLjAgIABSAFVJ"
            "CAAyLjI1LjEuMygAAgBVUwIAAQAoAAQAQ1MMAE1PTk9DSFJPTUUyICgAEABVUwIAEAAoABEAVVMCABAAKAAwAERT"
            "CAAxLjBcMS4wICgAAAFVUwIAEAAoAAEBVVMCAAwAKAACAVVTAgALACgAAwFVUwIAAAAoAFIQRFMCADAgKABTEERT"
            "AgAxIOB/EABPQgAA//////7/AOAEAAAAAAAAAP7/AOCcAQAAAgAAAEAAAACMAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAPIAAAH2APwB+QD5Af0A9QEAAP0B/An7AfwB/An7AfwB"
            "/An7AfwB/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAADxAvEC8wL/A/YC/AMPZXB7hpGcp7K9yNPe6fT/Cg+KlaCr"
            "tsHM1+Lt+AMOGSQvD6+6xdDb5vH8BxIdKDM+SVQP1N/q9QALFiEsN0JNWGNueQ/5BA8aJQALFiEsZ3J9iJOeDx4p"
            "ND9KJTA7RlGMl6KtuMMPQ05ZZG9KVWBrdrG8x9Ld6A9oc36JlG96hZCb1uHs9wIND42Yo665lJ+qtcD7BhEcJzIP"
            "sr3I097p9P8KFSArNkFMVw/X4u34Aw4ZJC86RVBbZnF8D/wHEh0oMz5JVF9qdYCLlqEPISw3Qk1YY255hI+apbC7"
            "xg9GUVxncn2Ik56ptL/K1eDrD2t2gYyXoq24w87Z5O/6BRAPkJumsbzH0t3o8/4JFB8qNf7/3eAAAAAA"
        )),
        ("regression-jpeg-slice-index", (
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAABESUNN"
            "AgAAAFVMBACeAAAAAgABAE9CAAACAAAAAAEKAAIAVUkaADEuMi44NDAuMTAwMDguNS4xLjQuMS4xLjQAAgADAFVJ"
            "DAAyLjI1LjEuNC4xLjECABAAVUkWADEuMi44NDAuMTAwMDguMS4yLjQuNzACABIAVUkcADEuMi4yNzYuMC43MjMw"
            "MDEwLjMuMC4zLjYuNwACADEAU0gQAE9GRklTX0RDTVRLXzM2NyAIABYAVUkaADEuMi44NDAuMTAwMDguNS4xLjQu"
            "MS4xLjQACAAYAFVJDAAyLjI1LjEuNC4xLjEIAGAAQ1MCAE1SCAA+EExPEABUMXcgTVBSQUdFIHNlZWQgCAARIVNU"
            "WABMb3NzbGVzcyBKUEVHIGNvbXByZXNzaW9uLCBzZWxlY3Rpb24gdmFsdWUgMSwgcG9pbnQgdHJhbnNmb3JtIDAs"
            "IGNvbXByZXNzaW9uIHJhdGlvIDIuMDQ4EAAQAFBOCgBGVapaXlNFRUQgEAAgAExPBgBGVVpaMSAYACMAQ1MCADNE"
            "GABQAERTBAAxLjUgGACAAERTBAAyMzAwGACBAERTBAAyLjk4GAAwEExPEABUMXcgTVBSQUdFIHNlZWQgIAANAFVJ"
            "CAAyLjI1LjEuMSAADgBVSQoAMi4yNS4xLjIuMSAAEwBJUwIAMiAgADIARFMOAC04LjBcLTguMFwxLjUgIAA3AERT"
            "GAAxLjBcMC4wXDAuMFwwLjBcMS4wXDAuMCAgAFIAVUkIADIuMjUuMS4zKAACAFVTAgABACgABABDUwwATU9OT0NI"
            "Uk9NRTIgKAAQAFVTAgAQACgAEQBVUwIAEAAoADAARFMIADEuMFwxLjAgKAAAAVVTAgAQACgAAQFVUwIADAAoAAIB"
            "VVMCAAsAKAADAVVTAgAAACgAUhBEUwIAMCAoAFMQRFMCADEg4H8QAE9CAAD//////v8A4AQAAAAAAAAA/v8A4PoA"
            "AAD/2P/gABBKRklGAAEBAAABAAEAAP/DAAsQABAAfgEBEQD/xAAXAAEBAQEAAAAAAAAAAAAAAAAEBgsP/9oACAEB"
            "AAEAAOAMi1rWta1rWta1rpVrWta1rWta1rXSrWta1rWta1rWulWta1rWta1rWtdKta177a1rXgdLWta6Va1r321r"
            "WvA6Wta10q1rXvtrWteB0ta1rpVrWvfbWta8Dpa1rXSrWte+2ta14HS1rWulWta1rWta1rWtdKta1rWta1rWta6V"
            "a1rWta1rWta10q1rWta1rWta1rpVrWta1rWta1rXSrWta1rWta1rWulWta1rWta1rWtf///Z/v/d4AAAAAA="
        )),
    ],
}


def uid(*parts):
    return "2.25." + ".".join(str(p) for p in parts)


def pixels(rows, cols, seed):
    """A 12-bit ramp with a bright square, different per seed."""
    out = bytearray()
    for r in range(rows):
        for c in range(cols):
            v = (r * 37 + c * 11 + seed * 101) % 1500
            if 4 <= r < 9 and 5 <= c < 10:
                v += 2000
            out += struct.pack("<H", v)
    return bytes(out)


def base(sop_class, sop_uid, series, rows, cols):
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = uid(1, 1)
    ds.SeriesInstanceUID = uid(1, 2, series)
    ds.FrameOfReferenceUID = uid(1, 3)
    ds.Modality = "MR"
    ds.PatientName = "FUZZ^SEED"
    ds.PatientID = "FUZZ1"
    ds.SeriesDescription = "T1w MPRAGE seed" if series % 2 else "FLAIR 3D seed"
    ds.ProtocolName = ds.SeriesDescription
    ds.MRAcquisitionType = "3D"
    ds.RepetitionTime = "2300"
    ds.EchoTime = "2.98"
    ds.Rows = rows
    ds.Columns = cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    return ds


def classic_slice(k, series=1, rows=16, cols=16):
    ds = base(MR, uid(1, 4, series, k), series, rows, cols)
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [-8.0, -8.0, float(k) * 1.5]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [1.0, 1.0]
    ds.SliceThickness = "1.5"
    ds.RescaleSlope = "1"
    ds.RescaleIntercept = "0"
    ds.PixelData = pixels(rows, cols, k)
    return ds


def enhanced(frames=3, rows=16, cols=16):
    ds = base(ENHANCED_MR, uid(1, 5, 1), 9, rows, cols)
    ds.InstanceNumber = 1
    ds.NumberOfFrames = frames
    measures = Dataset()
    measures.PixelSpacing = [1.0, 1.0]
    measures.SliceThickness = "1.0"
    orientation = Dataset()
    orientation.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
    transform = Dataset()
    transform.RescaleSlope = "1"
    transform.RescaleIntercept = "0"
    transform.RescaleType = "US"
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for f in range(frames):
        position = Dataset()
        position.ImagePositionPatient = [float(f), -8.0, 8.0]
        content = Dataset()
        content.InStackPositionNumber = f + 1
        group = Dataset()
        group.PlanePositionSequence = Sequence([position])
        group.FrameContentSequence = Sequence([content])
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = b"".join(pixels(rows, cols, f) for f in range(frames))
    return ds


def save(ds, path, ts):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ts
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)


def transcode(tool, args, src, dst):
    subprocess.run([tool, *args, str(src), str(dst)], check=True, capture_output=True)


def file_transfer_syntax_and_data_set(data):
    """(transfer syntax UID, data set bytes) of a Part 10 file: the group 2 elements are explicit
    VR LE and (0002,0000) gives their length."""
    assert data[128:132] == b"DICM"
    pos = 132
    tag = struct.unpack_from("<HH", data, pos)
    assert tag == (2, 0), tag
    group_length = struct.unpack_from("<I", data, pos + 8)[0]
    meta_end = pos + 12 + group_length
    ts = None
    while pos < meta_end:
        group, element = struct.unpack_from("<HH", data, pos)
        vr = data[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR"):
            length = struct.unpack_from("<I", data, pos + 8)[0]
            start = pos + 12
        else:
            length = struct.unpack_from("<H", data, pos + 6)[0]
            start = pos + 8
        if (group, element) == (2, 0x10):
            ts = data[start : start + length].rstrip(b"\0 ").decode()
        pos = start + length
    return ts, data[meta_end:]


# --- PDU capture: DCMTK SCUs -> recording proxy -> DCMTK storescp ---------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, deadline=10.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def capture(scu_args, upstream):
    """Runs one SCU (options, then its files after a `--` marker) through a proxy to
    `upstream`; returns the bytes the SCU sent."""
    options, files = scu_args, []
    if "--" in scu_args:
        at = scu_args.index("--")
        options, files = scu_args[:at], scu_args[at + 1 :]
    listener = socket.socket()
    listener.settimeout(30)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    sent = bytearray()

    def pump(src, dst, record):
        try:
            while True:
                chunk = src.recv(65536)
                if not chunk:
                    break
                if record is not None:
                    record.extend(chunk)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def serve():
        client, _ = listener.accept()
        server = socket.create_connection(("127.0.0.1", upstream))
        threads = [
            threading.Thread(target=pump, args=(client, server, sent)),
            threading.Thread(target=pump, args=(server, client, None)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        client.close()
        server.close()

    proxy = threading.Thread(target=serve, daemon=True)
    proxy.start()
    subprocess.run([*options, "127.0.0.1", str(port), *files], check=True, capture_output=True, timeout=60)
    proxy.join(timeout=10)
    listener.close()
    return bytes(sent)


def split_pdus(stream):
    pdus, pos = [], 0
    while pos + 6 <= len(stream):
        length = struct.unpack_from(">I", stream, pos + 2)[0]
        pdus.append(stream[pos : pos + 6 + length])
        pos += 6 + length
    return pdus


def command_sets(stream):
    """The command sets in a stream's P-DATA PDUs (fragments joined per context)."""
    out, pending = [], {}
    for pdu in split_pdus(stream):
        if pdu[0] != 0x04:
            continue
        pos = 6
        while pos + 6 <= len(pdu):
            length = struct.unpack_from(">I", pdu, pos)[0]
            pc, header = pdu[pos + 4], pdu[pos + 5]
            value = pdu[pos + 6 : pos + 4 + length]
            if header & 1:
                pending[pc] = pending.get(pc, b"") + value
                if header & 2:
                    out.append(pending.pop(pc))
            pos += 4 + length
    return out


def write_seeds(target, seeds):
    seeds = list(seeds) + [(name, base64.b64decode(data)) for name, data in REGRESSIONS.get(target, [])]
    directory = CORPUS / target
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    seen = set()
    for name, data in seeds:
        assert len(data) < MAX_SEED, (target, name, len(data))
        digest = hashlib.sha1(data).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        (directory / f"{name}-{digest[:10]}").write_bytes(data)
    print(f"{target}: {len(seen)} seeds")


def main():
    work = Path(tempfile.mkdtemp(prefix="fcdnode-corpus-"))
    try:
        run(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work):
    files = {}  # name -> path

    def add(name, ds, ts):
        path = work / f"{name}.dcm"
        save(ds, path, ts)
        files[name] = path
        return path

    add("mr-implicit", classic_slice(0), IMPLICIT)
    explicit = add("mr-explicit", classic_slice(1), EXPLICIT)
    add("mr-deflated", classic_slice(2), DEFLATED)
    add("enhanced-explicit", enhanced(), EXPLICIT)
    # 4.6 KB of pixels: more than one P-DATA fragment under a maximum PDU of 4096.
    add("mr-48", classic_slice(3, rows=48, cols=48), EXPLICIT)
    for name, tool, args in [
        ("mr-jpegls", "dcmcjpls", ["+el"]),
        ("mr-jpegls-near", "dcmcjpls", ["+en", "+un"]),
        ("mr-jpeg-sv1", "dcmcjpeg", ["+e1"]),
        ("mr-jpeg-lossless", "dcmcjpeg", ["+el"]),
        ("mr-rle", "dcmcrle", []),
    ]:
        path = work / f"{name}.dcm"
        transcode(tool, args, explicit, path)
        files[name] = path
    enhanced_path = work / "enhanced-jpegls.dcm"
    transcode("dcmcjpls", ["+el"], files["enhanced-explicit"], enhanced_path)
    files["enhanced-jpegls"] = enhanced_path
    series = [add(f"series-{k}", classic_slice(k, series=3), EXPLICIT) for k in range(3)]

    # assemble: single files, and the three-slice series joined (the target splits it again).
    assemble = [(name, path.read_bytes()) for name, path in sorted(files.items())]
    joined = SEPARATOR.join(p.read_bytes() for p in series)
    assemble.append(("series3", joined))
    write_seeds("assemble", assemble)

    # data_set: selector (the transfer syntax's index; +0x10 for the spilling buffer) + data set.
    data_sets = []
    for name, path in sorted(files.items()):
        ts, body = file_transfer_syntax_and_data_set(path.read_bytes())
        index = ACCEPTED.index(ts)
        data_sets.append((name, bytes([index]) + body))
        if name in ("mr-implicit", "mr-deflated", "enhanced-explicit"):
            data_sets.append((name + "-spilled", bytes([index | 0x10]) + body))
    write_seeds("data_set", data_sets)

    # PDUs, from DCMTK's SCUs.
    store_dir = work / "received"
    store_dir.mkdir()
    streams = []
    for scp_pdu in (16384, 4096):
        port = free_port()
        scp = subprocess.Popen(
            ["storescp", "-aet", "FCDNODE", "+xa", "-pdu", str(scp_pdu), "-od", str(store_dir), str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port)
            # wait_for_port's probe is an association that never started; give storescp a moment.
            time.sleep(0.2)
            scu = ["-aet", "FUZZSCU", "-aec", "FCDNODE"]
            jobs = [("echo", ["echoscu", *scu])]
            if scp_pdu == 16384:
                # -R: only the contexts the files need (a short A-ASSOCIATE-RQ), except once.
                jobs.append(("store-all-contexts", ["storescu", *scu, "--", str(files["mr-explicit"])]))
                for name, propose in [
                    ("mr-implicit", []),
                    ("mr-explicit", []),
                    ("mr-deflated", []),
                    ("mr-jpegls", ["-xt"]),
                    ("mr-rle", ["-xr"]),
                    ("mr-jpeg-sv1", ["-xs"]),
                ]:
                    jobs.append((f"store-{name}", ["storescu", *scu, "-R", *propose, "--", str(files[name])]))
                jobs.append(("store-deflate-proposed", ["storescu", *scu, "-R", "-xd", "--", str(files["mr-deflated"])]))
                jobs.append(("store-series", ["storescu", *scu, "-R", "--", *[str(p) for p in series]]))
            else:
                jobs.append(("store-enhanced-fragments", ["storescu", *scu, "-R", "--", str(files["enhanced-explicit"])]))
                jobs.append(("store-48-fragments", ["storescu", *scu, "-R", "--", str(files["mr-48"])]))
                jobs.append(("store-implicit-fragments", ["storescu", *scu, "-R", "-xi", "--", str(files["mr-implicit"])]))
            for name, args in jobs:
                streams.append((f"{name}-pdu{scp_pdu}", capture(args, port)))
        finally:
            scp.terminate()
            scp.wait()

    pdus = list(streams)
    for name, stream in streams:
        if name.startswith("store-mr-implicit"):
            for i, pdu in enumerate(split_pdus(stream)):
                pdus.append((f"single-{i}-type{pdu[0]}", pdu))
    write_seeds("pdu", pdus)

    commands = []
    for name, stream in streams:
        for i, command in enumerate(command_sets(stream)):
            commands.append((f"{name}-{i}", command))
    write_seeds("dimse_command", commands)


if __name__ == "__main__":
    if not shutil.which("storescp"):
        sys.exit("make_corpus.py: DCMTK (storescp, storescu, dcmcjpls) missing: run make setup")
    os.umask(0o022)
    main()
