#include "model/tokenizer.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/gguf.h"
#include "model/pretokenizer.h"

namespace xkv {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::IsEmpty;

std::string Utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xF0 | (cp >> 18));
    s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// GPT-2 bytes_to_unicode, written out independently of the implementation.
std::string ByteChar(int b) {
  static const std::vector<std::string> table = [] {
    std::vector<int> printable;
    for (int c = '!'; c <= '~'; ++c) printable.push_back(c);
    for (int c = 0xA1; c <= 0xAC; ++c) printable.push_back(c);
    for (int c = 0xAE; c <= 0xFF; ++c) printable.push_back(c);
    std::vector<std::string> t(256);
    std::set<int> seen(printable.begin(), printable.end());
    for (int c : printable) t[c] = Utf8(c);
    int n = 0;
    for (int c = 0; c < 256; ++c) {
      if (!seen.count(c)) t[c] = Utf8(256 + n++);
    }
    return t;
  }();
  return table[b];
}

// Byte-level text of a UTF-8 string ("a b" -> "aĠb").
std::string ByteLevel(std::string_view s) {
  std::string out;
  for (char c : s) out += ByteChar(static_cast<uint8_t>(c));
  return out;
}

// A tiny vocabulary: ids 0..255 are the byte tokens in byte order, then `extra` (normal tokens,
// given in raw UTF-8), then `specials` with their types.
using Merges = std::vector<std::pair<std::string, std::string>>;  // raw UTF-8 left, right

TokenizerData TinyData(const std::vector<std::string>& extra, const Merges& merges,
                       const std::vector<std::pair<std::string, int32_t>>& specials = {},
                       std::string pre = "gpt-2") {
  TokenizerData d;
  for (int b = 0; b < 256; ++b) d.tokens.push_back(ByteChar(b));
  for (const std::string& t : extra) d.tokens.push_back(ByteLevel(t));
  d.token_types.assign(d.tokens.size(), 1);
  for (const auto& [text, type] : specials) {
    d.tokens.push_back(text);
    d.token_types.push_back(type);
  }
  for (const auto& [left, right] : merges)
    d.merges.push_back(ByteLevel(left) + " " + ByteLevel(right));
  d.pre = std::move(pre);
  d.bos = d.eos = d.unk = d.pad = -1;
  return d;
}

std::unique_ptr<Tokenizer> Make(TokenizerData d) {
  auto t = Tokenizer::FromData(std::move(d));
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *std::move(t) : nullptr;
}

std::vector<int32_t> Enc(const Tokenizer& t, std::string_view s, bool special = true) {
  auto ids = t.Encode(s, special);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<int32_t>{};
}

std::vector<std::string> Split(std::string_view s,
                               PreTokenizerKind kind = PreTokenizerKind::kSmolLm) {
  std::vector<std::pair<uint32_t, uint32_t>> words;
  absl::Status st = PreTokenize(kind, s, &words);
  EXPECT_TRUE(st.ok()) << st;
  std::vector<std::string> out;
  for (auto [b, e] : words) out.emplace_back(s.substr(b, e - b));
  return out;
}

// ---------------------------------------------------------------- pre-tokenizer

TEST(PreTokenizerTest, WordsAndLeadingSpace) {
  EXPECT_THAT(Split("Hello world"), ElementsAre("Hello", " world"));
  EXPECT_THAT(Split("Hello, world!"), ElementsAre("Hello", ",", " world", "!"));
  EXPECT_THAT(Split("a.b...!!!c"), ElementsAre("a", ".", "b", "...!!!", "c"));
  EXPECT_THAT(Split(""), IsEmpty());
}

TEST(PreTokenizerTest, Contractions) {
  EXPECT_THAT(Split("I'm we'll've she'd it's"),
              ElementsAre("I", "'m", " we", "'ll", "'ve", " she", "'d", " it", "'s"));
  EXPECT_THAT(Split("they're"), ElementsAre("they", "'re"));
  // Only lower-case contractions are special; "'T" is punctuation then a letter.
  EXPECT_THAT(Split("DON'T"), ElementsAre("DON", "'", "T"));
  EXPECT_THAT(Split("'x"), ElementsAre("'", "x"));
  EXPECT_THAT(Split("'"), ElementsAre("'"));
}

TEST(PreTokenizerTest, WhitespaceRuns) {
  EXPECT_THAT(Split("  hello"), ElementsAre(" ", " hello"));
  EXPECT_THAT(Split("a  \n  b"), ElementsAre("a", "  \n ", " b"));
  EXPECT_THAT(Split("hello\n\nworld"), ElementsAre("hello", "\n", "\n", "world"));
  EXPECT_THAT(Split("\t\thello"), ElementsAre("\t", "\t", "hello"));
  EXPECT_THAT(Split("end   "), ElementsAre("end", "   "));
  EXPECT_THAT(Split("x\n"), ElementsAre("x", "\n"));
  EXPECT_THAT(Split(" "), ElementsAre(" "));
  // U+3000 (ideographic space) and U+00A0 are White_Space; U+200B is not.
  EXPECT_THAT(Split("\u3000abc"), ElementsAre("\u3000", "abc"));
  EXPECT_THAT(Split("a\u00a0b"), ElementsAre("a", "\u00a0", "b"));
  EXPECT_THAT(Split("a\u200bb"), ElementsAre("a", "\u200b", "b"));
}

TEST(PreTokenizerTest, DigitsSplitAloneForSmolLm) {
  EXPECT_THAT(Split("abc123"), ElementsAre("abc", "1", "2", "3"));
  EXPECT_THAT(Split(" 42 apples"), ElementsAre(" ", "4", "2", " apples"));
  EXPECT_THAT(Split("x² ½"), ElementsAre("x", "²", " ", "½"));  // No is \p{N}
  EXPECT_THAT(Split("٣٤"), ElementsAre("٣", "٤"));              // Arabic-Indic digits
  EXPECT_THAT(Split("a  1"), ElementsAre("a", "  ", "1"));      // look-ahead stops at the digit
  EXPECT_THAT(Split("abc123", PreTokenizerKind::kGpt2), ElementsAre("abc", "123"));
  EXPECT_THAT(Split(" 42 x", PreTokenizerKind::kGpt2), ElementsAre(" 42", " x"));
}

TEST(PreTokenizerTest, UnicodeLettersAndSymbols) {
  EXPECT_THAT(Split("café naïve"), ElementsAre("café", " naïve"));
  EXPECT_THAT(Split("日本語です"), ElementsAre("日本語です"));
  EXPECT_THAT(Split("你好，世界"), ElementsAre("你好", "，", "世界"));
  EXPECT_THAT(Split("Привет мир"), ElementsAre("Привет", " мир"));
  // Combining marks (M) are not letters.
  EXPECT_THAT(Split("e\u0301t"), ElementsAre("e", "\u0301", "t"));
  // Emoji are symbols: runs of them form one word, a leading space joins.
  EXPECT_THAT(Split("hi😀😀 there 👍🏽"), ElementsAre("hi", "😀😀", " there", " 👍🏽"));
  // Unassigned code points are "other" too.
  EXPECT_THAT(Split("a\u0378b"), ElementsAre("a", "\u0378", "b"));
  // Supplementary-plane letters (CJK extension B, Unicode 15 Kawi).
  EXPECT_THAT(Split("\U00020000\U00020001 \U00011F04"),
              ElementsAre("\U00020000\U00020001", " \U00011F04"));
}

TEST(PreTokenizerTest, RejectsInvalidUtf8) {
  for (std::string bad : {"\xC3", "\xC0\x80", "\xE0\x80\x80", "\xED\xA0\x80", "\xF4\x90\x80\x80",
                          "\xFF", "a\x80", "\xE2\x82"}) {
    std::vector<std::pair<uint32_t, uint32_t>> words;
    EXPECT_EQ(PreTokenize(PreTokenizerKind::kSmolLm, bad, &words).code(),
              absl::StatusCode::kInvalidArgument);
  }
  auto bad = PreTokenizerFromName("qwen35");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(bad.status().message()),
              ::testing::HasSubstr("tokenizer.ggml.pre = \"qwen35\""));
  auto llama3 = PreTokenizerFromName("llama-bpe");
  ASSERT_TRUE(llama3.ok());
  EXPECT_EQ(llama3->kind, PreTokenizerKind::kLlama3);
  EXPECT_TRUE(llama3->ignore_merges);
  EXPECT_TRUE(llama3->add_bos);
  EXPECT_EQ(PreTokenizerFromName("").value().kind, PreTokenizerKind::kDefault);
}

std::vector<std::string> Llama3(std::string_view s) { return Split(s, PreTokenizerKind::kLlama3); }

TEST(PreTokenizerTest, Llama3) {
  // Case-insensitive contractions, a non-letter prefix joins the letters, digits in threes.
  EXPECT_THAT(Llama3("DON'T we'LL"), ElementsAre("DON", "'T", " we", "'LL"));
  EXPECT_THAT(Llama3("1234567 x"), ElementsAre("123", "456", "7", " x"));
  EXPECT_THAT(Llama3("$hello (world)"), ElementsAre("$hello", " (", "world", ")"));
  // Punctuation keeps trailing newlines; whitespace ending in newlines is one word.
  EXPECT_THAT(Llama3("a.\n\nb"), ElementsAre("a", ".\n\n", "b"));
  EXPECT_THAT(Llama3("a  \n  b"), ElementsAre("a", "  \n", " ", " b"));
  EXPECT_THAT(Llama3("\nhello"), ElementsAre("\n", "hello"));
  EXPECT_THAT(Split("1234 x", PreTokenizerKind::kQwen2), ElementsAre("1", "2", "3", "4", " x"));
}

TEST(PreTokenizerTest, DeepseekAndFalcon) {
  // deepseek-llm: letters of its class with one leading space, punctuation runs, CJK runs,
  // number runs; a trailing space run stands alone.
  EXPECT_THAT(Split("Hello, world!! 123 你好  ", PreTokenizerKind::kDeepseekLlm),
              ElementsAre("Hello", ",", " world", "!!", " ", "123", " ", "你好", "  "));
  // deepseek-coder: \p{L} and \p{P} runs; digits one by one.
  EXPECT_THAT(Split("x=12; é", PreTokenizerKind::kDeepseekCoder),
              ElementsAre("x", "=", "1", "2", ";", " é"));
  // falcon: punctuation/symbol runs first, then GPT-2, then ASCII digit triples.
  EXPECT_THAT(Split("a+b=12345", PreTokenizerKind::kFalcon),
              ElementsAre("a", "+", "b", "=", "123", "45"));
}

// ---------------------------------------------------------------- BPE on a tiny vocabulary

TEST(TokenizerTest, LowestRankMergesFirst) {
  // ids: a=97, b=98, c=99, "bc"=256, "ab"=257
  auto bc_first = Make(TinyData({"bc", "ab"}, {{"b", "c"}, {"a", "b"}}));
  EXPECT_THAT(Enc(*bc_first, "abc"), ElementsAre('a', 256));
  auto ab_first = Make(TinyData({"bc", "ab"}, {{"a", "b"}, {"b", "c"}}));
  EXPECT_THAT(Enc(*ab_first, "abc"), ElementsAre(257, 'c'));
}

TEST(TokenizerTest, MergesChainAndTiesGoLeft) {
  auto t = Make(
      TinyData({"aa", "aaa", "ab", "abc"}, {{"a", "a"}, {"aa", "a"}, {"a", "b"}, {"ab", "c"}}));
  EXPECT_THAT(Enc(*t, "aa"), ElementsAre(256));
  EXPECT_THAT(Enc(*t, "aaa"), ElementsAre(257));        // (aa)a, then aa+a
  EXPECT_THAT(Enc(*t, "aaaa"), ElementsAre(256, 256));  // leftmost pair first: (aa)(aa)
  EXPECT_THAT(Enc(*t, "abc"), ElementsAre(259));
  EXPECT_THAT(Enc(*t, "aab"), ElementsAre(256, 'b'));  // "a a" (rank 0) beats "a b" (rank 2)
}

TEST(TokenizerTest, MergesApplyWithinWordsOnly) {
  auto t = Make(
      TinyData({" a", "a "}, {{" ", "a"}, {"a", " "}}));  // " a" merges, "a " never sees a space
  EXPECT_THAT(Enc(*t, "a a"), ElementsAre('a', 256));
}

TEST(TokenizerTest, EveryByteHasItsToken) {
  auto t = Make(TinyData({}, {}));
  std::set<int> covered;
  std::vector<uint32_t> cps;
  for (uint32_t cp = 0; cp < 0x800; ++cp) cps.push_back(cp);
  for (uint32_t cp = 0x800; cp < 0x10000; cp += 0x1000) {
    cps.push_back(cp >= 0xD800 && cp <= 0xDFFF ? 0xE000 : cp);
  }
  for (uint32_t cp : {0xD7FFu, 0xFFFFu, 0x10000u, 0x40000u, 0x80000u, 0xC0000u, 0x10FFFFu}) {
    cps.push_back(cp);
  }
  for (uint32_t cp : cps) {
    const std::string s = Utf8(cp);
    std::vector<int32_t> want;
    for (char c : s) {
      want.push_back(static_cast<uint8_t>(c));
      covered.insert(static_cast<uint8_t>(c));
    }
    EXPECT_THAT(Enc(*t, s), ElementsAreArray(want)) << "U+" << std::hex << cp;
  }
  // All bytes that can occur in UTF-8: everything but C0, C1, F5..FF.
  EXPECT_EQ(covered.size(), 256u - 2 - 11);
  // Decoding covers all 256 byte tokens.
  for (int b = 0; b < 256; ++b) {
    EXPECT_EQ(t->TokenBytes(b), std::string(1, static_cast<char>(b))) << b;
    auto one = t->Decode({b});
    ASSERT_TRUE(one.ok());
    EXPECT_EQ(*one, std::string(1, static_cast<char>(b)));
  }
}

TEST(TokenizerTest, MergeResultOutsideVocabFallsBackToByteTokens) {
  // As llama.cpp: the symbol's text bytes are looked up one by one; ASCII bytes are their own
  // byte-level text, so "xy" becomes x, y. Multi-byte byte-level characters have no single-byte
  // token and vanish ("é" -> "Ã©" -> nothing), which is llama.cpp's behaviour too.
  auto t = Make(TinyData({}, {{"x", "y"}, {"\xC3", "\xA9"}}));
  EXPECT_THAT(Enc(*t, "xy"), ElementsAre('x', 'y'));
  EXPECT_THAT(Enc(*t, "é"), IsEmpty());
}

TEST(TokenizerTest, SpecialTokensSplitLongestFirst) {
  const std::vector<std::pair<std::string, int32_t>> specials = {
      {"<|im", 3}, {"<|im_start|>", 3}, {"<|im_end|>", 3}, {"<tool>", 4}};
  auto t = Make(TinyData({}, {}, specials));
  const int32_t im = 256, start = 257, end = 258, tool = 259;
  EXPECT_THAT(Enc(*t, "<|im_start|>hi<|im_end|><|im"), ElementsAre(start, 'h', 'i', end, im));
  EXPECT_THAT(Enc(*t, "a<tool>b"), ElementsAre('a', tool, 'b'));
  // Without parse_special, control texts are plain text; user-defined tokens still split.
  const std::vector<int32_t> plain = Enc(*t, "<|im_end|><tool>", false);
  EXPECT_THAT(plain, ElementsAre('<', '|', 'i', 'm', '_', 'e', 'n', 'd', '|', '>', tool));
  // Control tokens decode to their text.
  auto text = t->Decode({start, 'h', end});
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "<|im_start|>h<|im_end|>");
  EXPECT_TRUE(t->IsControl(start));
  EXPECT_FALSE(t->IsControl(tool));
  EXPECT_FALSE(t->IsControl('a'));
  EXPECT_EQ(t->FindToken("<|im_end|>"), end);
  EXPECT_EQ(t->FindToken("nope"), -1);
  EXPECT_EQ(t->vocab_size(), 260);
}

TEST(TokenizerTest, Errors) {
  auto t = Make(TinyData({}, {}));
  for (std::string bad : {"\xC3", "ok\xFF", "\xED\xA0\x80", "\xC1\xBF"}) {
    EXPECT_EQ(t->Encode(bad, true).status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(t->Decode({256}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t->Decode({-1}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t->TokenBytes(999), "");

  TokenizerData bad_pre = TinyData({}, {}, {}, "qwen35");
  EXPECT_EQ(Tokenizer::FromData(bad_pre).status().code(), absl::StatusCode::kUnimplemented);
  TokenizerData bad_model = TinyData({}, {});
  bad_model.model = "t5";
  EXPECT_EQ(Tokenizer::FromData(bad_model).status().code(), absl::StatusCode::kUnimplemented);
  TokenizerData no_bos = TinyData({}, {}, {}, "llama-bpe");  // Llama 3 adds BOS by default
  EXPECT_EQ(Tokenizer::FromData(no_bos).status().code(), absl::StatusCode::kInvalidArgument);
  TokenizerData bad_types = TinyData({}, {});
  bad_types.token_types.pop_back();
  EXPECT_EQ(Tokenizer::FromData(bad_types).status().code(), absl::StatusCode::kInvalidArgument);
  TokenizerData bad_bos = TinyData({}, {});
  bad_bos.bos = 1000;
  EXPECT_EQ(Tokenizer::FromData(bad_bos).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TokenizerTest, AddBosFollowsModelFlag) {
  TokenizerData d = TinyData({}, {}, {{"<s>", 3}});
  d.bos = 256;
  d.add_bos = true;
  auto t = Make(d);
  EXPECT_THAT(Enc(*t, "a"), ElementsAre(256, 'a'));
  EXPECT_EQ(t->bos(), 256);
}

// Random strings of random code points (all planes, no surrogates) with some ASCII mixed in.
std::string RandomUtf8(std::mt19937& rng, int max_cps) {
  std::uniform_int_distribution<int> len(0, max_cps), kind(0, 9);
  std::uniform_int_distribution<uint32_t> ascii(0, 0x7F), bmp(0x80, 0xFFFF), any(0x10000, 0x10FFFF);
  std::string s;
  for (int n = len(rng); n > 0; --n) {
    const int k = kind(rng);
    uint32_t cp = k < 5 ? ascii(rng) : k < 9 ? bmp(rng) : any(rng);
    if (cp >= 0xD800 && cp <= 0xDFFF) cp = ' ';
    s += Utf8(cp);
  }
  return s;
}

TEST(TokenizerTest, RoundTripsRandomUtf8) {
  // Merges whose results are all in the vocabulary, so nothing falls back.
  auto t = Make(TinyData({" t", "he", " the", "in", "  "},
                         {{" ", "t"}, {"h", "e"}, {" t", "he"}, {"i", "n"}, {" ", " "}},
                         {{"<|endoftext|>", 3}}, "smollm"));
  std::mt19937 rng(42);
  for (int i = 0; i < 500; ++i) {
    const std::string s = RandomUtf8(rng, 40) + (i % 7 == 0 ? " the in  <|endoftext|>" : "");
    auto ids = t->Encode(s, true);
    ASSERT_TRUE(ids.ok()) << ids.status();
    auto back = t->Decode(*ids);
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, s) << "case " << i;
  }
}

TEST(TokenizerTest, FromGgufReadsTokenizerKeys) {
  TokenizerData d = TinyData({"ab"}, {{"a", "b"}}, {{"<|im_end|>", 3}}, "smollm");
  GgufWriter w;
  w.SetMetadata("tokenizer.ggml.model", GgufValue::String("gpt2"));
  w.SetMetadata("tokenizer.ggml.pre", GgufValue::String("smollm"));
  w.SetMetadata("tokenizer.ggml.tokens", GgufValue::StringArray(d.tokens));
  std::vector<GgufValue> types;
  for (int32_t ty : d.token_types) types.push_back(GgufValue::Int32(ty));
  w.SetMetadata("tokenizer.ggml.token_type", GgufValue::Array(GgufValueType::kInt32, types));
  w.SetMetadata("tokenizer.ggml.merges", GgufValue::StringArray(d.merges));
  w.SetMetadata("tokenizer.ggml.eos_token_id", GgufValue::Uint32(257));
  w.SetMetadata("tokenizer.ggml.add_bos_token", GgufValue::Bool(false));
  auto bytes = w.WriteBuffer();
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  auto file = GgufFile::FromBuffer(*bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  auto t = Tokenizer::FromGguf(**file);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT(Enc(**t, "ab12<|im_end|>"), ElementsAre(256, '1', '2', 257));
  EXPECT_EQ((*t)->eos(), 257);
  EXPECT_EQ((*t)->bos(), -1);

  GgufWriter bert;
  bert.SetMetadata("tokenizer.ggml.model", GgufValue::String("bert"));
  auto bert_file = GgufFile::FromBuffer(*bert.WriteBuffer());
  ASSERT_TRUE(bert_file.ok());
  auto unsupported = Tokenizer::FromGguf(**bert_file);
  EXPECT_EQ(unsupported.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(unsupported.status().message()),
              ::testing::HasSubstr("tokenizer.ggml.model = \"bert\""));
}

TEST(TokenizerTest, AddBosDefaultsAsLlamaCpp) {
  TokenizerData d = TinyData({}, {}, {{"<|begin_of_text|>", 3}}, "llama-bpe");
  d.bos = 256;
  auto llama3 = Make(d);  // no add_bos_token key: llama-bpe adds BOS
  EXPECT_THAT(Enc(*llama3, "a"), ElementsAre(256, 'a'));
  auto ids = llama3->Encode("a", /*parse_special=*/true, /*add_special=*/false);
  ASSERT_TRUE(ids.ok());
  EXPECT_THAT(*ids, ElementsAre('a'));
  d.add_bos = false;  // the key wins
  EXPECT_THAT(Enc(*Make(d), "a"), ElementsAre('a'));
}

// llama.cpp's llama-bpe ignore_merges: a word that is a vocabulary entry is that token, even when
// the merges would not build it.
TEST(TokenizerTest, IgnoreMergesTakesWholeWords) {
  TokenizerData d = TinyData({"abc"}, {}, {{"<s>", 3}}, "llama-bpe");
  d.bos = 257;
  auto t = Make(d);
  auto ids = t->Encode("abc ab", true, false);
  ASSERT_TRUE(ids.ok());
  EXPECT_THAT(*ids, ElementsAre(256, ' ', 'a', 'b'));
}

// Texts llama.cpp treats as control tokens whatever their GGUF type, and the end-of-turn /
// end-of-message ids it infers from them.
TEST(TokenizerTest, InfersControlTokensAndEndOfTurn) {
  auto t = Make(TinyData({}, {}, {{"<|eot_id|>", 4}, {"<|eom_id|>", 1}, {"<|im_end|>", 3}}));
  EXPECT_TRUE(t->IsControl(256));
  EXPECT_TRUE(t->IsControl(257));
  EXPECT_EQ(t->eot(), 256);  // llama.cpp's list order: <|eot_id|> before <|im_end|>
  EXPECT_EQ(t->eom(), 257);
  // Control now: without parse_special the text is plain text.
  EXPECT_EQ(Enc(*t, "<|eot_id|>", false).size(), 10u);
  TokenizerData keyed = TinyData({}, {}, {{"<|eot_id|>", 3}, {"<|im_end|>", 3}});
  keyed.eot = 257;
  EXPECT_EQ(Make(keyed)->eot(), 257);
}

// A SentencePiece vocabulary: ids 0..2 <unk> <s> </s>, 3..258 the byte tokens <0x00>..<0xFF>,
// then `pieces` with their scores (spaces written as U+2581).
TokenizerData SpmData(const std::vector<std::pair<std::string, float>>& pieces) {
  TokenizerData d;
  d.model = "llama";
  d.tokens = {"<unk>", "<s>", "</s>"};
  d.token_types = {2, 3, 3};
  for (int b = 0; b < 256; ++b) {
    char hex[8];
    std::snprintf(hex, sizeof(hex), "<0x%02X>", b);
    d.tokens.push_back(hex);
    d.token_types.push_back(6);
  }
  d.scores.assign(d.tokens.size(), 0.0f);
  for (const auto& [text, score] : pieces) {
    d.tokens.push_back(text);
    d.token_types.push_back(1);
    d.scores.push_back(score);
  }
  d.unk = 0, d.bos = 1, d.eos = 2;
  return d;
}

TEST(TokenizerTest, SentencePieceMergesByScoreWithSpacePrefixAndByteFallback) {
  // 259 "▁", 260 "▁h", 261 "hi", 262 "▁hi", 263 "i"
  auto t = Make(SpmData({{"▁", -1}, {"▁h", -2}, {"hi", -1.5}, {"▁hi", -1}, {"i", -3}}));
  // BOS, then " hi" -> "▁hi": "hi" (score -1.5) beats "▁h" (-2), then "▁"+"hi" is an entry.
  EXPECT_THAT(Enc(*t, "hi"), ElementsAre(1, 262));
  auto no_bos = t->Encode("hi hi", true, false);
  ASSERT_TRUE(no_bos.ok());
  EXPECT_THAT(*no_bos, ElementsAre(262, 262));
  // No entry for "x": byte fallback <0x78>; é is two byte tokens.
  EXPECT_THAT(*t->Encode("x", true, false), ElementsAre(259, 3 + 'x'));
  EXPECT_THAT(*t->Encode("é", true, false), ElementsAre(259, 3 + 0xC3, 3 + 0xA9));
  // The space prefix follows special tokens too, and decoding maps ▁ back to spaces.
  EXPECT_THAT(*t->Encode("</s>hi", true, false), ElementsAre(2, 262));
  EXPECT_EQ(*t->Decode({262, 3 + 0xC3, 3 + 0xA9}), " hié");
  TokenizerData no_prefix = SpmData({{"▁", -1}, {"hi", -1.5}});
  no_prefix.add_space_prefix = false;
  EXPECT_THAT(*Make(no_prefix)->Encode("hi", true, false), ElementsAre(260));
}

// Phi-3 (by general.name, as llama.cpp): special tokens eat the spaces after them, except <s>,
// <unk> and <|endoftext|>.
TEST(TokenizerTest, Phi3SpecialTokensStripFollowingSpaces) {
  TokenizerData d = SpmData({{"▁", -1}, {"hi", -1.5}, {"▁hi", -1}, {"<|user|>", 0}});
  d.token_types.back() = 3;
  d.name = "Phi3";
  auto t = Make(d);
  EXPECT_THAT(*t->Encode("<|user|>  \nhi", true, false), ElementsAre(262, 261));
  d.name = "llama";  // "▁▁hi": the space after the token stays
  EXPECT_THAT(*Make(d)->Encode("<|user|> hi", true, false), ElementsAre(262, 259, 261));
}

// ---------------------------------------------------------------- the real SmolLM2 vocabulary

class SmolLm2TokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* path = std::getenv("XKV_MODEL");
    if (path == nullptr || !std::filesystem::exists(path)) {
      GTEST_SKIP() << "XKV_MODEL not set or missing";
    }
    auto file = GgufFile::Open(path);
    ASSERT_TRUE(file.ok()) << file.status();
    auto t = Tokenizer::FromGguf(**file);
    ASSERT_TRUE(t.ok()) << t.status();
    tok_ = *std::move(t);
  }
  std::unique_ptr<Tokenizer> tok_;
};

// Expected ids from llama.cpp (llama-cpp-python 0.3.36, vocab_only, tokenize(add_bos=False,
// special=True)).
TEST_F(SmolLm2TokenizerTest, MatchesLlamaCpp) {
  EXPECT_EQ(tok_->vocab_size(), 49152);
  EXPECT_EQ(tok_->bos(), 1);
  EXPECT_EQ(tok_->eos(), 2);
  EXPECT_THAT(Enc(*tok_, "Hello world"), ElementsAre(19556, 905));
  EXPECT_THAT(Enc(*tok_, "I'm 25 years old, aren't you?"),
              ElementsAre(57, 5248, 216, 34, 37, 929, 1573, 28, 4775, 982, 346, 47));
  EXPECT_THAT(Enc(*tok_, "  leading\n\n\ttabs   "),
              ElementsAre(216, 2899, 1116, 197, 100, 7366, 333));
  EXPECT_THAT(Enc(*tok_, "café 日本語 😀👍🏽"),
              ElementsAre(83, 1939, 2756, 17097, 241, 115, 40993, 179, 120, 248, 40303, 218, 10813,
                          235, 231, 10813, 233, 138));
  EXPECT_THAT(Enc(*tok_, "def f(x):\n    return x**2  # square\n"),
              ElementsAre(1604, 275, 24, 104, 727, 472, 1003, 1792, 828, 34, 216, 907, 5222, 198));
  EXPECT_THAT(Enc(*tok_, "price: $1,234.56"),
              ElementsAre(17517, 42, 1885, 33, 28, 34, 35, 36, 30, 37, 38));
  const std::string chat = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n";
  EXPECT_THAT(Enc(*tok_, chat), ElementsAre(1, 4093, 198, 6004, 2, 198, 1, 520, 9531, 198));
  EXPECT_THAT(Enc(*tok_, chat, false),
              ElementsAre(44, 108, 306, 79, 3738, 108, 46, 4093, 198, 6004, 44, 108, 306, 79, 486,
                          108, 46, 198, 44, 108, 306, 79, 3738, 108, 46, 520, 9531, 198));
  EXPECT_TRUE(tok_->IsControl(2));
  EXPECT_EQ(tok_->FindToken("<|im_end|>"), 2);
  EXPECT_EQ(tok_->TokenBytes(2), "<|im_end|>");
}

// SmolLM2 has no token for 21 byte values (04 06 13 14 16 1D C0 C1 F1 F2 F5..FF); llama.cpp drops
// such bytes silently (its byte fallback finds no token), and so do we.
TEST_F(SmolLm2TokenizerTest, BytesWithoutTokensAreDroppedAsLlamaCpp) {
  EXPECT_THAT(Enc(*tok_,
                  "a\x13"
                  "b"),
              ElementsAre(81, 82));
  EXPECT_THAT(Enc(*tok_, "\U00050000"), ElementsAre(234, 218, 218));  // lead byte F1 has no token
  int missing = 0;
  for (int b = 0; b < 256; ++b) missing += tok_->FindToken(ByteChar(b)) < 0;
  EXPECT_EQ(missing, 21);
}

TEST_F(SmolLm2TokenizerTest, RoundTripsRandomUtf8) {
  auto encodable = [&](const std::string& s) {
    for (char c : s) {
      if (tok_->FindToken(ByteChar(static_cast<uint8_t>(c))) < 0) return false;
    }
    return true;
  };
  std::mt19937 rng(7);
  for (int i = 0; i < 300; ++i) {
    std::string s;
    for (const std::string& piece : {RandomUtf8(rng, 30), RandomUtf8(rng, 30)}) {
      for (size_t p = 0; p < piece.size();) {  // keep the code points whose bytes all have tokens
        size_t n = 1;
        while (p + n < piece.size() && (static_cast<uint8_t>(piece[p + n]) & 0xC0) == 0x80) ++n;
        if (encodable(piece.substr(p, n))) s += piece.substr(p, n);
        p += n;
      }
    }
    auto ids = tok_->Encode(s, true);
    ASSERT_TRUE(ids.ok()) << ids.status();
    auto back = tok_->Decode(*ids);
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, s) << "case " << i;
  }
}

}  // namespace
}  // namespace xkv
