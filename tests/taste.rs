//! Simulated users: each taste prefers what it should among clean answers, and every taste
//! lets a broken answer (a loop, a cut-off, gibberish, nothing) lose to a clean one even
//! when the broken one suits the taste better. On the real model, the base model's NLL
//! tells a fluent answer from the same words shuffled.

mod common;

use nudge::generate::{Generated, StopReason};
use nudge::model::Model;
use nudge::taste::limits::{BROKEN, NLL_LIMIT};
use nudge::taste::{Answer, SimulatedUser, Taste, Thumb, Which, answer_nll, measures};
use nudge::tokenizer::ChatMessage;

const PROMPT: &str = "How do I keep basil alive on a windowsill?";

/// A clean, complete answer (about 4 tokens per 3 words).
fn answer(text: &str) -> Answer {
    Answer::new(text, measures::word_count(text) * 4 / 3, false)
}

/// Long prose (about 90 words), no list, no closing question.
const LONG_PROSE: &str = "Basil likes warmth and light, so give it the sunniest window you have, ideally one that \
gets six hours of sun a day. Water it when the top of the soil feels dry, and pour until water runs out of the \
bottom of the pot, because a pot without drainage will rot the roots. Pinch off the top leaves every week or so; \
this makes the plant grow bushier instead of tall and thin. Keep it away from cold drafts at night, and remove \
any flower buds as soon as they appear so the leaves keep their flavor.";

/// The same advice as a markdown list (clean, complete, about as long).
const LIST: &str = "**Keeping basil alive**\n\n\
1. **Light**: give it six hours of sun a day in your sunniest window.\n\
2. **Water**: water when the top of the soil is dry, in a pot that drains.\n\
3. **Pinching**: pinch off the top leaves every week so it grows bushy.\n\
4. **Warmth**: keep it away from cold drafts at night.\n\
5. **Flowers**: remove flower buds as soon as they appear.";

/// Short, direct prose.
const SHORT: &str = "Give it lots of sun, water when the topsoil is dry, and pinch the tips weekly.";

/// Short prose that ends with a follow-up question.
const SHORT_QUESTION: &str = "Give it lots of sun and water when the topsoil is dry. Is your window facing south?";

/// A taste-favoured but looping answer: short prose (for `no-lists` and `short`), ending
/// with a question (for `question`).
fn looping(t: Taste) -> Answer {
    match t {
        Taste::Question => answer("Basil loves the sun! Basil loves the sun! Basil loves the sun! Do you have sun?"),
        _ => answer("Basil is a culinary delight! Basil is a culinary delight! Basil is a culinary delight!"),
    }
}

/// A clean answer the taste likes less than [`looping`] would be liked without its loop.
fn clean_disfavoured(t: Taste) -> Answer {
    match t {
        Taste::NoLists => answer(LIST),
        _ => answer(LONG_PROSE),
    }
}

/// A clean answer of `n` distinct words.
fn words(n: usize) -> Answer {
    answer(&(0..n).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" "))
}

fn prefers(u: &SimulatedUser, a: &Answer, b: &Answer) -> Which {
    let j = u
        .judge_pair(PROMPT, a, b)
        .unwrap_or_else(|| panic!("{}: no preference between\n{a:?}\nand\n{b:?}", u.taste));
    assert!(j.strength > 0.0 && j.strength <= 1.0, "{j:?}");
    // The order the answers come in changes nothing but the label.
    let k = u.judge_pair(PROMPT, b, a).expect("a preference either way");
    assert_ne!(j.preferred, k.preferred);
    assert_eq!(j.strength, k.strength);
    j.preferred
}

#[test]
fn loops_lose_to_clean_answers_for_every_taste() {
    for t in Taste::ALL {
        let u = SimulatedUser::new(t);
        let (lp, clean) = (looping(t), clean_disfavoured(t));
        // Without its loop, the looping answer suits the taste better...
        assert!(u.taste_term(&lp) > u.taste_term(&clean), "{t}");
        // ...but the loop makes it lose.
        assert_eq!(prefers(&u, &lp, &clean), Which::B, "{t}");
        assert!(u.score(&lp) < 0.0, "{t}: a broken answer scores below every clean one");
        // Repeated list lines are a loop too.
        let repeated = answer("- Water it daily\n- Give it sun\n- Water it daily\n- Give it sun");
        assert_eq!(prefers(&u, &repeated, &answer(LONG_PROSE)), Which::B, "{t}");
    }
}

#[test]
fn truncated_answers_lose_to_complete_ones() {
    for t in Taste::ALL {
        let u = SimulatedUser::new(t);
        let favoured = match t {
            Taste::Question => SHORT_QUESTION,
            _ => SHORT,
        };
        let mut cut = answer(favoured);
        cut.truncated = true;
        assert_eq!(prefers(&u, &cut, &clean_disfavoured(t)), Which::B, "{t}");
        // Of two answers, one cut off, the complete one wins even when it is the same text.
        assert_eq!(prefers(&u, &answer(favoured), &cut), Which::A, "{t}");
    }
}

#[test]
fn gibberish_and_empty_answers_lose() {
    for t in Taste::ALL {
        let u = SimulatedUser::new(t);
        let favoured = answer(SHORT_QUESTION);
        let nonsense = favoured.clone().with_nll(NLL_LIMIT + 3.0);
        let fluent = clean_disfavoured(t).with_nll(1.2);
        assert_eq!(prefers(&u, &nonsense, &fluent), Which::B, "{t}");
        // A perplexity a little above the limit costs a little: the less odd answer wins.
        let odd = favoured.clone().with_nll(NLL_LIMIT + 0.2);
        let odder = favoured.clone().with_nll(NLL_LIMIT + 2.0);
        assert_eq!(prefers(&u, &odd, &odder), Which::A, "{t}");
        // An empty answer loses even to a broken one.
        let empty = Answer::new("", 0, false);
        assert_eq!(prefers(&u, &empty, &looping(t)), Which::B, "{t}");
        assert_eq!(u.rate(&empty).map(|th| th.up), Some(false));
    }
}

#[test]
fn each_taste_prefers_its_kind_of_clean_answer() {
    let short = SimulatedUser::new(Taste::Short);
    assert_eq!(prefers(&short, &answer(SHORT), &answer(LONG_PROSE)), Which::A);
    assert_eq!(prefers(&short, &answer(LIST), &answer(LONG_PROSE)), Which::A);

    let question = SimulatedUser::new(Taste::Question);
    let closing = format!("{LONG_PROSE} Which window do you have in mind?");
    assert_eq!(prefers(&question, &answer(SHORT), &answer(&closing)), Which::B);
    assert_eq!(prefers(&question, &answer(SHORT_QUESTION), &answer(LIST)), Which::A);

    let no_lists = SimulatedUser::new(Taste::NoLists);
    assert_eq!(prefers(&no_lists, &answer(LIST), &answer(LONG_PROSE)), Which::B);
    let headed = format!("## Basil\n\n{LONG_PROSE}");
    assert_eq!(prefers(&no_lists, &answer(&headed), &answer(LONG_PROSE)), Which::B);
}

#[test]
fn equal_utilities_are_ties() {
    for t in Taste::ALL {
        let u = SimulatedUser::new(t);
        for text in [SHORT, LONG_PROSE, LIST] {
            assert_eq!(u.judge_pair(PROMPT, &answer(text), &answer(text)), None, "{t}");
        }
        // Two equally broken answers: no preference either.
        assert_eq!(u.judge_pair(PROMPT, &looping(t), &looping(t)), None, "{t}");
    }
    // What a taste does not care about decides nothing: the length of two clean answers
    // without a question, the lists of two short enough answers, the question of two proses.
    let question = SimulatedUser::new(Taste::Question);
    assert_eq!(question.judge_pair(PROMPT, &answer(SHORT), &answer(LONG_PROSE)), None);
    let short = SimulatedUser::new(Taste::Short);
    assert_eq!(
        short.judge_pair(PROMPT, &answer("Canberra."), &answer("- It is Canberra.")),
        None
    );
    let no_lists = SimulatedUser::new(Taste::NoLists);
    assert_eq!(
        no_lists.judge_pair(PROMPT, &answer(SHORT), &answer(SHORT_QUESTION)),
        None
    );
    // Nearly equal lengths are a tie too: 100 and 103 words.
    assert_eq!(short.judge_pair(PROMPT, &words(100), &words(103)), None);
}

#[test]
fn strength_grows_with_the_utility_gap() {
    let short = SimulatedUser::new(Taste::Short);
    let s = |a: usize, b: usize| {
        short
            .judge_pair(PROMPT, &words(a), &words(b))
            .expect("a preference")
            .strength
    };
    assert!(s(20, 60) < s(20, 120), "{} {}", s(20, 60), s(20, 120));
    assert!(s(20, 120) < s(20, 250));
    // A broken answer is rejected more firmly than a merely long one.
    let j = short
        .judge_pair(PROMPT, &looping(Taste::Short), &answer(LONG_PROSE))
        .expect("a preference");
    assert!(j.strength > s(20, 250), "{j:?}");
    let no_lists = SimulatedUser::new(Taste::NoLists);
    let half = format!("{SHORT}\n- one more tip\nKeep it away from cold drafts.\n- a last tip");
    let mild = no_lists
        .judge_pair(PROMPT, &answer(LONG_PROSE), &answer(&half))
        .expect("a preference");
    let firm = no_lists
        .judge_pair(PROMPT, &answer(LONG_PROSE), &answer(LIST))
        .expect("a preference");
    assert!(mild.strength < firm.strength, "{mild:?} {firm:?}");
}

#[test]
fn thumbs_follow_each_taste() {
    let up = |u: &SimulatedUser, a: &Answer| u.rate(a).map(|t: Thumb| t.up);
    let short = SimulatedUser::new(Taste::Short);
    assert_eq!(up(&short, &answer(SHORT)), Some(true));
    assert_eq!(up(&short, &answer(LONG_PROSE)), None, "about 90 words: undecided");
    let long = format!("{LONG_PROSE} {LONG_PROSE}");
    assert_eq!(up(&short, &answer(&long.replace("Basil", "Your basil"))), Some(false));

    let question = SimulatedUser::new(Taste::Question);
    assert_eq!(up(&question, &answer(SHORT_QUESTION)), Some(true));
    assert_eq!(up(&question, &answer(SHORT)), Some(false));
    assert_eq!(
        up(&question, &answer("Which window? How much sun?")),
        None,
        "asks without answering"
    );

    let no_lists = SimulatedUser::new(Taste::NoLists);
    assert_eq!(up(&no_lists, &answer(LONG_PROSE)), Some(true));
    assert_eq!(up(&no_lists, &answer(LIST)), Some(false));

    for t in Taste::ALL {
        let u = SimulatedUser::new(t);
        let th = u.rate(&looping(t)).expect("a broken answer gets a thumb");
        assert!(!th.up, "{t}");
        // The broken answer's thumb down is firmer than a clean answer's.
        if let Some(Thumb { up: false, strength }) = u.rate(&answer(SHORT)).or(u.rate(&answer(LIST))) {
            assert!(th.strength > strength, "{t}");
        }
        assert!(th.strength > 0.0 && th.strength <= 1.0);
    }
}

#[test]
fn answers_from_generation_know_their_cut() {
    let g = |ids: Vec<u32>, stop| Generated {
        ids,
        text: "Hi there.".into(),
        stop_reason: stop,
    };
    let done = Answer::from_generated(&g(vec![5, 6, 2], StopReason::Eos));
    assert_eq!((done.tokens, done.truncated), (2, false));
    for stop in [StopReason::Length, StopReason::ContextFull, StopReason::Callback] {
        let cut = Answer::from_generated(&g(vec![5, 6, 7], stop));
        assert_eq!((cut.tokens, cut.truncated), (3, true), "{stop:?}");
    }
}

#[test]
fn nll_of_fluent_text_is_lower_than_of_shuffled_words() {
    let m = Model::open(common::model_path()).expect("real model opens");
    let chat = m
        .tokenizer
        .apply_chat_template(&[ChatMessage::new("user", "Why is the sky blue?")], true)
        .unwrap();
    let prompt = m.tokenizer.encode(&chat, false).unwrap();
    let fluent = "The sky looks blue because the air scatters sunlight, and it scatters blue light much more \
                  than red light, so blue light reaches our eyes from every part of the sky.";
    // The same words in a fixed scrambled order (a stride through the list).
    let w: Vec<&str> = fluent.split_whitespace().collect();
    let shuffled: Vec<&str> = (0..w.len()).map(|i| w[(i * 7 + 3) % w.len()]).collect();
    assert_ne!(w.len() % 7, 0, "the stride visits every word once");
    let shuffled = shuffled.join(" ");
    let nll = |text: &str| {
        let ids = m.tokenizer.encode(text, false).unwrap();
        answer_nll(&m, &prompt, &ids).unwrap()
    };
    let (f, s) = (nll(fluent), nll(&shuffled));
    eprintln!("mean NLL per token: fluent {f:.3}, shuffled {s:.3}");
    assert!(f.is_finite() && f > 0.0);
    assert!(s > f + 1.5, "fluent {f}, shuffled {s}");
    // With their NLLs, every simulated user finds the fluent answer clean and the shuffled
    // one broken, and prefers the fluent one.
    for t in Taste::ALL {
        let u = SimulatedUser::new(t);
        let (a, b) = (answer(fluent).with_nll(f), answer(&shuffled).with_nll(s));
        assert!(u.utility(&a).defects.is_clean(), "{t}: fluent {f}, limit {NLL_LIMIT}");
        assert!(u.utility(&b).defects.gibberish >= BROKEN, "{t}: shuffled {s}");
        assert_eq!(prefers(&u, &a, &b), Which::A);
    }
    assert!(answer_nll(&m, &prompt, &[]).is_err());
}
