"""The UI's labels in English, Chinese and Japanese, from one table.

`t(key, lang)` looks a label up; a key missing in a language falls back to English, and an
unknown key is an error (a typo must not silently show the key). `{name}` placeholders are
filled with `str.format`.
"""

from __future__ import annotations

LANGS = ("en", "zh", "ja")

# key: (English, Chinese, Japanese)
TABLE: dict[str, tuple[str, str, str]] = {
    "title": ("songstep: music generation", "songstep：音乐生成", "songstep：音楽生成"),
    "model": ("Model", "模型", "モデル"),
    "mode_simple": ("Simple", "简单模式", "シンプル"),
    "mode_custom": ("Custom", "自定义模式", "カスタム"),
    "description": ("Describe the song in one sentence", "用一句话描述歌曲", "曲を一文で説明"),
    "instrumental": ("Instrumental (no vocals)", "纯音乐（无人声）", "インストゥルメンタル（ボーカルなし）"),
    "language": ("Vocal language", "演唱语言", "歌唱言語"),
    "caption": ("Caption (genre, instruments, mood)", "描述（风格、乐器、情绪）", "キャプション（ジャンル・楽器・雰囲気）"),
    "lyrics": ("Lyrics with section tags ([Verse], [Chorus])", "歌词（含段落标签 [Verse]、[Chorus]）",
               "歌詞（セクションタグ [Verse]、[Chorus] 付き）"),
    "bpm": ("BPM", "速度 (BPM)", "テンポ (BPM)"),
    "keyscale": ("Key", "调性", "キー"),
    "timesignature": ("Time signature", "拍号", "拍子"),
    "duration": ("Duration (s)", "时长（秒）", "長さ（秒）"),
    "task": ("Task", "任务", "タスク"),
    "task_text2music": ("New song", "新歌曲", "新しい曲"),
    "task_cover": ("Cover", "翻唱", "カバー"),
    "task_repaint": ("Repaint", "局部重绘", "部分修正"),
    "task_lego": ("Add layer", "添加音轨", "レイヤー追加"),
    "task_extract": ("Extract", "提取音轨", "トラック抽出"),
    "task_complete": ("Complete", "补全伴奏", "伴奏補完"),
    "source_audio": ("Source audio", "源音频", "ソース音声"),
    "reference_audio": ("Reference audio (timbre)", "参考音频（音色）", "参照音声（音色）"),
    "strength": ("Cover strength", "翻唱强度", "カバー強度"),
    "cover_noise_strength": ("Start from the noised source", "从加噪源音频开始", "ノイズを加えたソースから開始"),
    "repaint_strength": ("Repaint strength outside the window", "窗口外重绘强度", "範囲外の修正強度"),
    "repaint_start": ("Start (s)", "开始（秒）", "開始（秒）"),
    "repaint_end": ("End (s)", "结束（秒）", "終了（秒）"),
    "track": ("Track", "音轨", "トラック"),
    "tracks": ("Tracks", "音轨", "トラック"),
    "advanced": ("Advanced settings", "高级设置", "詳細設定"),
    "variant": ("DiT variant", "DiT 版本", "DiT バリアント"),
    "steps": ("Steps (empty: model default)", "步数（留空：模型默认）", "ステップ数（空欄：既定値）"),
    "shift": ("Shift (empty: model default)", "偏移（留空：模型默认）", "シフト（空欄：既定値）"),
    "guidance": ("Guidance (CFG, base/sft)", "引导强度（CFG）", "ガイダンス（CFG）"),
    "guidance_method": ("Guidance method", "引导方式", "ガイダンス方式"),
    "cfg_start": ("CFG interval start", "CFG 区间开始", "CFG 区間の開始"),
    "cfg_end": ("CFG interval end", "CFG 区间结束", "CFG 区間の終了"),
    "solver": ("Solver", "求解器", "ソルバー"),
    "seed": ("Seed (-1: random)", "种子（-1：随机）", "シード（-1：ランダム）"),
    "batch": ("Takes (batch)", "生成数量", "テイク数"),
    "format": ("Audio format", "音频格式", "音声形式"),
    "lm": ("Planner LM", "规划语言模型", "プランナー LM"),
    "thinking": ("Let the LM write audio codes", "让语言模型生成音频码", "LM に音声コードを書かせる"),
    "use_cot_caption": ("Use the LM's rewritten caption", "使用语言模型改写的描述", "LM が書き直したキャプションを使う"),
    "lm_temperature": ("LM temperature", "语言模型温度", "LM 温度"),
    "lm_cfg_scale": ("LM CFG scale", "语言模型 CFG", "LM CFG スケール"),
    "lm_top_p": ("LM top-p", "语言模型 top-p", "LM top-p"),
    "lm_top_k": ("LM top-k", "语言模型 top-k", "LM top-k"),
    "generate": ("Generate", "生成", "生成"),
    "status": ("Status", "状态", "状態"),
    "idle": ("Ready.", "就绪。", "準備完了。"),
    "submitting": ("Submitting…", "提交中…", "送信中…"),
    "queued": ("Queued: position {pos} in the queue", "排队中：第 {pos} 位", "待機中：キューの {pos} 番目"),
    "running": ("Generating: {stage} {pct}%", "生成中：{stage} {pct}%", "生成中：{stage} {pct}%"),
    "done": ("Done: {n} take(s) in {seconds} s", "完成：{n} 条，用时 {seconds} 秒", "完了：{n} テイク、{seconds} 秒"),
    "error": ("Error", "错误", "エラー"),
    "results": ("Results", "结果", "結果"),
    "take": ("Take {n} · seed {seed}", "第 {n} 条 · 种子 {seed}", "テイク {n} · シード {seed}"),
    "spectrogram": ("Spectrogram", "频谱图", "スペクトログラム"),
    "metadata": ("Metadata", "元数据", "メタデータ"),
    "use_as_source": ("Use as source", "用作源音频", "ソースとして使う"),
    "history": ("History (this session)", "历史记录（本次会话）", "履歴（このセッション）"),
    "no_planner": ("Simple mode needs the planner LM, and none is loaded. Start the UI with a planner "
                   "(songstep ui --model … --lm 0.6B) or use Custom mode.",
                   "简单模式需要规划语言模型，但当前未加载。请用 --lm 0.6B 启动界面，或使用自定义模式。",
                   "シンプルモードにはプランナー LM が必要ですが、読み込まれていません。--lm 0.6B で起動するか、"
                   "カスタムモードを使ってください。"),
    "need_description": ("Write a sentence describing the song.", "请写一句话描述歌曲。", "曲を説明する一文を書いてください。"),
    "source_loaded": ("Take {n} is now the source of a {task}.", "第 {n} 条已设为{task}的源音频。",
                      "テイク {n} を {task} のソースにしました。"),
    "lrc": ("Timed lyrics (LRC)", "时间轴歌词（LRC）", "タイム付き歌詞（LRC）"),
    "lrc_button": ("Timed lyrics and score", "生成时间轴歌词与评分", "タイム付き歌詞とスコア"),
    "lora": ("LoRA adapter", "LoRA 适配器", "LoRA アダプター"),
    "lora_path": ("Adapter file or folder", "适配器文件或文件夹", "アダプターのファイルまたはフォルダー"),
    "lora_scale": ("Scale", "强度", "スケール"),
    "lora_load": ("Load", "加载", "読み込み"),
    "lora_apply": ("Apply scale / on-off", "应用强度/开关", "スケール・オンオフを適用"),
    "lora_enabled": ("Enabled", "启用", "有効"),
    "lora_unload": ("Unload", "卸载", "アンロード"),
}


def t(key: str, lang: str = "en", **values: object) -> str:
    """The label `key` in `lang` (English when that language has none)."""
    if key not in TABLE:
        raise KeyError(f"no UI label {key!r}")
    index = LANGS.index(lang) if lang in LANGS else 0
    text = TABLE[key][index] or TABLE[key][0]
    return text.format(**values) if values else text
