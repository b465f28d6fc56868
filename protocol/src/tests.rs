use super::*;

#[test]
fn control_message_round_trips() {
    let msg = Message::Request {
        id: 7,
        request: Request::Scale { workers: 3 },
    };
    let frame = encode_frame(&msg).unwrap();
    let mut reader = FrameReader::new();
    reader.push(&frame);
    assert_eq!(reader.next_frame::<Message>().unwrap(), Some(msg));
    assert_eq!(reader.next_frame::<Message>().unwrap(), None);
}
