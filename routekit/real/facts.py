"""Facts behind the project's real data: the knowledge set's questions and the verb lists.

Written by the project: the facts are common knowledge, the wording is ours. Each knowledge
entry is ``(kind, question, answer)``; an answer is a short word, phrase or number that a
correct answer sentence contains (the ``sentence`` checker looks for it in the first sentence),
and never a word of its own question.
"""

from __future__ import annotations

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
    "Portugal": "Lisbon", "the United Kingdom": "London", "Ireland": "Dublin",
    "the Netherlands": "Amsterdam", "Belgium": "Brussels", "Austria": "Vienna",
    "Poland": "Warsaw", "the Czech Republic": "Prague", "Hungary": "Budapest",
    "Greece": "Athens", "Sweden": "Stockholm", "Norway": "Oslo", "Denmark": "Copenhagen",
    "Finland": "Helsinki", "Iceland": "Reykjavik", "Russia": "Moscow", "Romania": "Bucharest",
    "Bulgaria": "Sofia", "Serbia": "Belgrade", "Croatia": "Zagreb", "Turkey": "Ankara",
    "Egypt": "Cairo", "Kenya": "Nairobi", "Nigeria": "Abuja", "Ethiopia": "Addis Ababa",
    "Morocco": "Rabat", "Ghana": "Accra", "Senegal": "Dakar", "Algeria": "Algiers",
    "Tunisia": "Tunis", "Japan": "Tokyo", "China": "Beijing", "South Korea": "Seoul",
    "North Korea": "Pyongyang", "India": "New Delhi", "Pakistan": "Islamabad",
    "Bangladesh": "Dhaka", "Thailand": "Bangkok", "Vietnam": "Hanoi", "Indonesia": "Jakarta",
    "the Philippines": "Manila", "Malaysia": "Kuala Lumpur", "Nepal": "Kathmandu",
    "Afghanistan": "Kabul", "Iran": "Tehran", "Iraq": "Baghdad", "Saudi Arabia": "Riyadh",
    "Syria": "Damascus", "Lebanon": "Beirut", "Jordan": "Amman", "Qatar": "Doha",
    "the United States": "Washington", "Canada": "Ottawa", "Cuba": "Havana",
    "Jamaica": "Kingston", "Brazil": "Brasilia", "Argentina": "Buenos Aires",
    "Chile": "Santiago", "Peru": "Lima", "Colombia": "Bogota", "Venezuela": "Caracas",
    "Ecuador": "Quito", "Uruguay": "Montevideo", "Australia": "Canberra",
    "New Zealand": "Wellington", "Fiji": "Suva", "Mongolia": "Ulaanbaatar",
    "Scotland": "Edinburgh", "Wales": "Cardiff", "Slovakia": "Bratislava",
    "Slovenia": "Ljubljana", "Estonia": "Tallinn", "Latvia": "Riga", "Lithuania": "Vilnius",
    "Albania": "Tirana", "Cyprus": "Nicosia", "Malta": "Valletta", "Uganda": "Kampala",
    "Zimbabwe": "Harare", "Zambia": "Lusaka", "Angola": "Luanda", "Sudan": "Khartoum",
    "Libya": "Tripoli", "Somalia": "Mogadishu", "Madagascar": "Antananarivo",
    "Cambodia": "Phnom Penh", "Laos": "Vientiane", "Uzbekistan": "Tashkent",
    "Armenia": "Yerevan", "Azerbaijan": "Baku", "Belarus": "Minsk",
    "Costa Rica": "San Jose", "Honduras": "Tegucigalpa", "Nicaragua": "Managua",
    "Haiti": "Port-au-Prince", "the Dominican Republic": "Santo Domingo",
}  # fmt: skip

CONTINENTS = {
    "Kenya": "Africa", "Brazil": "South America", "Japan": "Asia", "France": "Europe",
    "Canada": "North America", "Egypt": "Africa", "Argentina": "South America",
    "India": "Asia", "Germany": "Europe", "Mexico": "North America", "Nigeria": "Africa",
    "Peru": "South America", "China": "Asia", "Italy": "Europe", "Chile": "South America",
    "Thailand": "Asia", "Spain": "Europe", "Ghana": "Africa", "Colombia": "South America",
    "Vietnam": "Asia", "Sweden": "Europe", "Ethiopia": "Africa", "Poland": "Europe",
    "Morocco": "Africa", "Norway": "Europe", "Uganda": "Africa", "Venezuela": "South America",
    "Nepal": "Asia", "Portugal": "Europe", "Bolivia": "South America", "Mongolia": "Asia",
    "Senegal": "Africa",
}  # fmt: skip

LANGUAGES = {
    "Brazil": "Portuguese", "Mexico": "Spanish", "France": "French", "Germany": "German",
    "Italy": "Italian", "Japan": "Japanese", "Russia": "Russian", "Spain": "Spanish",
    "Portugal": "Portuguese", "Argentina": "Spanish", "Greece": "Greek",
    "the Netherlands": "Dutch", "Sweden": "Swedish", "Poland": "Polish", "Turkey": "Turkish",
    "Egypt": "Arabic", "Saudi Arabia": "Arabic", "South Korea": "Korean", "Thailand": "Thai",
    "Vietnam": "Vietnamese", "Hungary": "Hungarian", "Norway": "Norwegian",
    "Denmark": "Danish", "Chile": "Spanish", "Colombia": "Spanish", "Austria": "German",
    "Peru": "Spanish",
}  # fmt: skip

CURRENCIES = {
    "Japan": "yen", "the United Kingdom": "pound", "the United States": "dollar",
    "India": "rupee", "Russia": "ruble", "Mexico": "peso", "South Korea": "won",
    "Switzerland": "franc", "Brazil": "real", "Thailand": "baht", "Turkey": "lira",
    "Sweden": "krona", "Germany": "euro", "France": "euro", "Italy": "euro", "Spain": "euro",
    "South Africa": "rand", "Canada": "dollar", "Australia": "dollar",
}  # fmt: skip

ELEMENTS = {
    "hydrogen": "H", "helium": "He", "carbon": "C", "nitrogen": "N", "oxygen": "O",
    "sodium": "Na", "potassium": "K", "iron": "Fe", "copper": "Cu", "silver": "Ag",
    "gold": "Au", "lead": "Pb", "mercury": "Hg", "tin": "Sn", "zinc": "Zn", "calcium": "Ca",
    "magnesium": "Mg", "chlorine": "Cl", "sulfur": "S", "phosphorus": "P", "neon": "Ne",
    "aluminum": "Al", "silicon": "Si", "uranium": "U", "lithium": "Li", "fluorine": "F",
    "argon": "Ar", "nickel": "Ni", "platinum": "Pt",
}  # fmt: skip
# Elements asked the other way round: "Which element has the chemical symbol Fe?"
SYMBOL_QUESTIONS = ["Fe", "Au", "Ag", "Na", "Cu", "Pb", "Hg", "He", "Zn", "Ca"]

SCIENCE = [
    ("What planet is known as the Red Planet?", "Mars"),
    ("What is the largest planet in the solar system?", "Jupiter"),
    ("What planet is closest to the Sun?", "Mercury"),
    ("Which planet is famous for its large rings?", "Saturn"),
    ("What star is at the center of our solar system?", "Sun"),
    ("What is the name of Earth's natural satellite?", "Moon"),
    ("What gas do plants take in from the air to make food?", "carbon dioxide"),
    ("What gas do people need to breathe in to live?", "oxygen"),
    ("At what temperature in degrees Celsius does water boil at sea level?", "100"),
    ("At what temperature in degrees Celsius does water freeze?", "0"),
    ("What is H2O better known as?", "water"),
    ("What force pulls things toward the ground?", "gravity"),
    ("What is the hardest natural material?", "diamond"),
    ("What sweet food do bees make?", "honey"),
    ("What is the center of an atom called?", "nucleus"),
    ("Which particle in an atom has a negative charge?", "electron"),
    ("How many planets are in our solar system?", "8"),
    ("What is the largest ocean on Earth?", "Pacific"),
    ("What is the tallest mountain in the world?", "Everest"),
    ("What process do plants use to make food from sunlight?", "photosynthesis"),
    ("What is the chemical formula of water?", "H2O"),
    ("What do you call water when it is frozen solid?", "ice"),
    ("What does a caterpillar turn into?", "butterfly"),
    ("What is the fastest land animal?", "cheetah"),
    ("What is the largest continent?", "Asia"),
    ("How many continents are there?", "7"),
    ("Which vitamin does the skin make in sunlight?", "vitamin D"),
    ("What is the SI unit of force?", "newton"),
    ("What is the SI unit of energy?", "joule"),
    ("What is the SI unit of power?", "watt"),
    ("What is the SI unit of electrical resistance?", "ohm"),
    ("What is the SI unit of mass?", "kilogram"),
    ("What is the largest hot desert in the world?", "Sahara"),
    ("What is the study of living things called?", "biology"),
    ("What is the study of the stars and planets called?", "astronomy"),
    ("What scientist is known for the theory of relativity?", "Einstein"),
]

BODY = [
    ("Which organ pumps blood around the body?", "heart"),
    ("Which organ in your head do you think with?", "brain"),
    ("How many bones are in the adult human body?", "206"),
    ("What is the largest organ of the human body?", "skin"),
    ("What is the hard outer layer of a tooth called?", "enamel"),
    ("Which organ makes insulin?", "pancreas"),
    ("What is the long bone in the thigh called?", "femur"),
    ("How many chambers does the human heart have?", "4"),
    ("How many teeth does an adult human usually have?", "32"),
    ("Which organs clean the blood and make urine?", "kidneys"),
    ("What color is human blood?", "red"),
    ("Which organs do people breathe with?", "lungs"),
    ("What are the blood vessels that carry blood away from the heart called?", "arteries"),
    ("Which part of the eye is colored?", "iris"),
]

ANIMALS = [
    ("What is a baby dog called?", "puppy"),
    ("What is a baby cat called?", "kitten"),
    ("What is a baby cow called?", "calf"),
    ("What is a baby sheep called?", "lamb"),
    ("What is a baby horse called?", "foal"),
    ("What is a baby kangaroo called?", "joey"),
    ("What is a baby frog called?", "tadpole"),
    ("What is a baby bear called?", "cub"),
    ("What is a baby duck called?", "duckling"),
    ("Which animal is called the king of the jungle?", "lion"),
    ("What is the largest bird in the world?", "ostrich"),
    ("Which animal has a long trunk?", "elephant"),
    ("Which animal has black and white stripes?", "zebra"),
    ("What do pandas mostly eat?", "bamboo"),
    ("Which animal says meow?", "cat"),
    ("What is the tallest animal?", "giraffe"),
    ("How many legs does a spider have?", "8"),
    ("How many legs does an insect have?", "6"),
    ("Which animal is called man's best friend?", "dog"),
    ("Which bird is a symbol of peace?", "dove"),
    ("What is the largest mammal?", "blue whale"),
    ("Which mammal can fly?", "bat"),
    ("What animal is Nemo in the film Finding Nemo?", "clownfish"),
    ("Which animal gives us wool?", "sheep"),
]

OPPOSITES = {
    "hot": "cold", "big": "small", "up": "down", "happy": "sad", "fast": "slow",
    "rich": "poor", "early": "late", "full": "empty", "wet": "dry", "strong": "weak",
    "good": "bad", "day": "night", "black": "white", "left": "right", "in": "out",
    "love": "hate", "win": "lose", "true": "false", "tall": "short", "thick": "thin",
    "high": "low", "inside": "outside", "push": "pull", "buy": "sell", "alive": "dead",
    "clean": "dirty", "cheap": "expensive", "loud": "quiet", "north": "south",
    "east": "west", "top": "bottom", "first": "last", "near": "far", "always": "never",
    "question": "answer", "boy": "girl", "before": "after", "heavy": "light",
}  # fmt: skip

PLURALS = {
    "child": "children", "mouse": "mice", "tooth": "teeth", "foot": "feet", "man": "men",
    "woman": "women", "goose": "geese", "person": "people", "leaf": "leaves",
    "knife": "knives", "wife": "wives", "box": "boxes", "city": "cities", "baby": "babies",
    "bus": "buses", "cat": "cats", "dog": "dogs", "book": "books", "ox": "oxen",
    "cactus": "cacti", "potato": "potatoes", "hero": "heroes", "church": "churches",
    "wolf": "wolves", "half": "halves", "story": "stories",
}  # fmt: skip

TRANSLATIONS = [
    ("Spanish", "hello", "hola"), ("Spanish", "thank you", "gracias"),
    ("French", "thank you", "merci"), ("French", "hello", "bonjour"),
    ("German", "thank you", "danke"), ("Spanish", "cat", "gato"), ("Spanish", "dog", "perro"),
    ("Italian", "hello", "ciao"), ("German", "yes", "ja"), ("Spanish", "water", "agua"),
    ("French", "water", "eau"), ("Spanish", "house", "casa"), ("German", "house", "Haus"),
    ("Spanish", "friend", "amigo"), ("Spanish", "red", "rojo"), ("French", "red", "rouge"),
    ("Spanish", "book", "libro"), ("French", "bread", "pain"), ("Spanish", "milk", "leche"),
    ("German", "water", "Wasser"), ("Spanish", "one", "uno"), ("French", "yes", "oui"),
    ("Spanish", "good morning", "buenos dias"), ("French", "goodbye", "au revoir"),
]  # fmt: skip

EVERYDAY = [
    ("How many days are in a week?", "7"),
    ("How many months are in a year?", "12"),
    ("How many hours are in a day?", "24"),
    ("How many minutes are in an hour?", "60"),
    ("How many seconds are in a minute?", "60"),
    ("How many days are in a leap year?", "366"),
    ("How many sides does a triangle have?", "3"),
    ("How many sides does a square have?", "4"),
    ("How many sides does a pentagon have?", "5"),
    ("How many sides does a hexagon have?", "6"),
    ("How many sides does an octagon have?", "8"),
    ("How many cents are in a dollar?", "100"),
    ("How many letters are in the English alphabet?", "26"),
    ("How many players does a soccer team have on the field?", "11"),
    ("How many strings does a standard guitar have?", "6"),
    ("How many keys does a standard piano have?", "88"),
    ("How many years are in a century?", "100"),
    ("How many years are in a decade?", "10"),
    ("How many eggs are in a dozen?", "12"),
    ("What is the first month of the year?", "January"),
    ("What is the last month of the year?", "December"),
    ("What day comes after Monday?", "Tuesday"),
    ("What day comes after Friday?", "Saturday"),
    ("What day comes before Sunday?", "Saturday"),
    ("What month comes after March?", "April"),
    ("What month comes after June?", "July"),
    ("What month comes before December?", "November"),
    ("Which season comes after winter?", "spring"),
    ("Which season comes after spring?", "summer"),
    ("What color is a ripe banana?", "yellow"),
    ("What color is fresh grass?", "green"),
    ("What color is snow?", "white"),
    ("What color is the sky on a clear day?", "blue"),
    ("What color do you get when you mix blue and yellow?", "green"),
    ("What color do you get when you mix red and white?", "pink"),
    ("What color do you get when you mix red and yellow?", "orange"),
    ("What color is a ripe tomato?", "red"),
    ("What color is coal?", "black"),
    ("What fruit is wine made from?", "grapes"),
    ("What drink do cows give?", "milk"),
    ("What is the main ingredient of guacamole?", "avocado"),
    ("What do you call a shape with three sides?", "triangle"),
    ("Which meal do people eat in the morning?", "breakfast"),
    ("What do you write with on a blackboard?", "chalk"),
    ("What do you call the frozen white flakes that fall in winter?", "snow"),
    ("What do bees live in?", "hive"),
    ("What do you use to cut paper?", "scissors"),
]

CULTURE = [
    ('Who wrote the play "Romeo and Juliet"?', "Shakespeare"),
    ('Who wrote the play "Hamlet"?', "Shakespeare"),
    ("Who painted the Mona Lisa?", "da Vinci"),
    ("Who was the first president of the United States?", "George Washington"),
    ("Who wrote the Harry Potter books?", "Rowling"),
    ("Who discovered penicillin?", "Fleming"),
    ("Who proposed the theory of evolution by natural selection?", "Darwin"),
    ("Who was the first person to walk on the Moon?", "Armstrong"),
    ("Who is credited with inventing the telephone?", "Bell"),
    ('Who wrote the novel "Pride and Prejudice"?', "Austen"),
    ('Who painted "The Starry Night"?', "Van Gogh"),
    ("Who formulated the three laws of motion?", "Newton"),
    ('Who wrote the novel "1984"?', "Orwell"),
    ("Which company makes the iPhone?", "Apple"),
    ('Who wrote "Don Quixote"?', "Cervantes"),
    ("Who was the Greek god of the sea?", "Poseidon"),
    ("Who was the king of the gods in Greek mythology?", "Zeus"),
    ("In which city is the Eiffel Tower?", "Paris"),
    ("In which country are the pyramids of Giza?", "Egypt"),
    ("In which city is the Colosseum?", "Rome"),
    ("In which country is the Taj Mahal?", "India"),
    ("In which city is the Statue of Liberty?", "New York"),
    ("In which country is Machu Picchu?", "Peru"),
    ("What is the largest country by area?", "Russia"),
    ("In which city is Big Ben?", "London"),
    ("In which country is the Great Wall?", "China"),
    ("In which country did the Olympic Games begin?", "Greece"),
]


def knowledge_entries() -> list[tuple[str, str, str]]:
    """Every knowledge question as ``(kind, question, answer)``, in a fixed order."""
    out: list[tuple[str, str, str]] = []
    out += [("capital", f"What is the capital of {c}?", a) for c, a in CAPITALS.items()]
    out += [("continent", f"On which continent is {c}?", a) for c, a in CONTINENTS.items()]
    out += [
        ("language", f"What is the main language spoken in {c}?", a) for c, a in LANGUAGES.items()
    ]
    out += [("currency", f"What is the currency of {c}?", a) for c, a in CURRENCIES.items()]
    out += [("element", f"What is the chemical symbol for {e}?", s) for e, s in ELEMENTS.items()]
    names = {s: e for e, s in ELEMENTS.items()}
    out += [
        ("element", f"Which element has the chemical symbol {s}?", names[s])
        for s in SYMBOL_QUESTIONS
    ]
    out += [("science", q, a) for q, a in SCIENCE]
    out += [("body", q, a) for q, a in BODY]
    out += [("animal", q, a) for q, a in ANIMALS]
    out += [("opposite", f'What is the opposite of "{w}"?', a) for w, a in OPPOSITES.items()]
    out += [("plural", f'What is the plural of "{w}"?', a) for w, a in PLURALS.items()]
    out += [
        ("translation", f'What is the {lang} word for "{w}"?', a) for lang, w, a in TRANSLATIONS
    ]
    out += [("everyday", q, a) for q, a in EVERYDAY]
    out += [("culture", q, a) for q, a in CULTURE]
    return out


# Verbs whose past tense is irregular (base, past). Verbs with two common past forms
# ("dreamed"/"dreamt") or a past equal to the base ("cut") are left out.
IRREGULAR_VERBS = {
    "arise": "arose", "awake": "awoke", "bear": "bore", "become": "became", "begin": "began",
    "bend": "bent", "bind": "bound", "bite": "bit", "bleed": "bled", "blow": "blew",
    "break": "broke", "breed": "bred", "bring": "brought", "build": "built", "buy": "bought",
    "catch": "caught", "choose": "chose", "cling": "clung", "come": "came", "creep": "crept",
    "deal": "dealt", "dig": "dug", "do": "did", "draw": "drew", "drink": "drank",
    "drive": "drove", "eat": "ate", "fall": "fell", "feed": "fed", "feel": "felt",
    "fight": "fought", "find": "found", "flee": "fled", "fling": "flung", "fly": "flew",
    "forbid": "forbade", "forget": "forgot", "forgive": "forgave", "freeze": "froze",
    "get": "got", "give": "gave", "go": "went", "grind": "ground", "grow": "grew",
    "have": "had", "hear": "heard", "hide": "hid", "hold": "held", "keep": "kept",
    "know": "knew", "lay": "laid", "lead": "led", "leave": "left", "lend": "lent",
    "lose": "lost", "make": "made", "mean": "meant", "meet": "met", "pay": "paid",
    "ride": "rode", "ring": "rang", "rise": "rose", "run": "ran", "say": "said", "see": "saw",
    "seek": "sought", "sell": "sold", "send": "sent", "shake": "shook", "shoot": "shot",
    "shrink": "shrank", "sing": "sang", "sink": "sank", "sit": "sat", "sleep": "slept",
    "slide": "slid", "sling": "slung", "speak": "spoke", "spend": "spent", "spin": "spun",
    "spring": "sprang", "stand": "stood", "steal": "stole", "stick": "stuck", "sting": "stung",
    "stink": "stank", "stride": "strode", "strike": "struck", "string": "strung",
    "swear": "swore", "sweep": "swept", "swim": "swam", "swing": "swung", "take": "took",
    "teach": "taught", "tear": "tore", "tell": "told", "think": "thought", "throw": "threw",
    "tread": "trod", "understand": "understood", "wake": "woke", "wear": "wore",
    "weep": "wept", "win": "won", "wind": "wound", "withdraw": "withdrew", "wring": "wrung",
    "write": "wrote", "overcome": "overcame", "undertake": "undertook", "mislead": "misled",
}  # fmt: skip

# Regular verbs, grouped by how the past tense is spelled.
VERBS_ED = """walk jump play clean open help cook talk look work want need start finish watch
wash wish push pull kick pick pack lock knock laugh visit listen answer order offer enter
wonder remember consider happen follow borrow allow enjoy stay pray obey destroy employ annoy
delay display spray fix mix relax box paint print point plant count act collect correct
connect expect protect respect select suggest test rest trust last list twist resist insist
exist assist request invent prevent rent hunt melt add end mend land hand attend defend depend
pretend extend record reward avoid load succeed guard boil fail mail sail nail rain train
explain complain remain contain obtain gain join ruin return turn warn earn form perform
inform warm harm farm alarm arm claim aim seem steam scream fill kill call roll yell pour tour
cover discover deliver gather bother water lower number filter murder suffer differ wander
whisper appear clear fear cheer steer peel heal seal reveal repeat treat heat cheat float
boast roast toast shout doubt sort report support export import escort part chart alert
convert insert sound pound crowd flood greet belong attack crack track check wreck thank rank
link bark park mark mask ask risk dust jerk kiss miss pass cross dress press guess bless
stress express discuss process fetch stretch sketch match touch search reach preach march
crash flash splash rush brush crush polish punish vanish establish publish accomplish sigh
weigh cough swallow show snow glow bow row tow chew view review screw brew wait fold rock lick
hook book shock block fish yawn heed weed bloom groan moan roam own frown drown crown mount haunt
bump dump pump stamp camp limp hint sprint squint pluck suck""".split()
VERBS_D = """live love like hope move dance smile close change use wipe bake hate share care dare
compare prepare declare create relate decorate celebrate translate separate donate rate skate
vote note quote invite excite unite cause pause refuse confuse amuse excuse raise praise
surprise promise notice place race face force produce reduce introduce announce pronounce
chase increase decrease release please tease squeeze sneeze breathe bathe serve deserve
observe save wave behave solve involve believe receive achieve arrive tie die agree free
manage damage judge charge arrange exchange imagine examine determine argue continue rescue
glue file scare stare score ignore explore store adore admire hire retire fire tire require
measure treasure capture picture cure secure ensure approve improve prove remove combine
decline describe subscribe bribe guide provide decide divide invade fade trade shade grade
paste waste taste type joke smoke poke choke stroke hike bounce""".split()
VERBS_IED = """carry cry try marry hurry worry study copy bury apply reply supply deny dry fry spy
empty envy multiply identify satisfy terrify tidy vary rely occupy pity classify notify
qualify modify justify magnify simplify unify verify""".split()
# Regular verbs that double their last consonant.
VERBS_DOUBLED = """stop plan drop hop shop clap rob hug beg nod grab rub jog skip slip trip step
wrap ship chop admit commit permit regret prefer refer occur control chat pat pin ban fan scan
tap zip hum trim drag tag plug""".split()


def past_tenses() -> dict[str, str]:
    """Every verb of the lists above with its past tense, irregular ones first."""
    out = dict(IRREGULAR_VERBS)
    for v in VERBS_ED:
        out.setdefault(v, v + "ed")
    for v in VERBS_D:
        out.setdefault(v, v + "d")
    for v in VERBS_IED:
        out.setdefault(v, v[:-1] + "ied")
    for v in VERBS_DOUBLED:
        out.setdefault(v, v + v[-1] + "ed")
    return out
